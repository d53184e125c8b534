# One customer-managed key for the project's data at rest (S3 objects, the MLflow database and
# its password secret) when sse_algorithm = "aws:kms". With "AES256" nothing is created here and
# S3 uses S3-managed keys, RDS and Secrets Manager their AWS-managed keys.

locals {
  use_kms      = var.sse_algorithm == "aws:kms"
  data_key_arn = local.use_kms ? aws_kms_key.data[0].arn : null
}

resource "aws_kms_key" "data" {
  count = local.use_kms ? 1 : 0

  description             = "${var.name}: S3 buckets, MLflow database and its secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  # No key policy here: the default one delegates to IAM, so the IRSA role policies in iam.tf
  # decide which pods may use the key.
}

resource "aws_kms_alias" "data" {
  count = local.use_kms ? 1 : 0

  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data[0].key_id
}
