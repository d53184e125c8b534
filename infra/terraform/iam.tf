# IRSA roles for the pods. Each Kubernetes service account in var.k8s_namespace may assume
# exactly one role, and each role reaches exactly the buckets its stage reads or writes:
#
#   ray-ingest   media: read/write                       (download + transcode into shards)
#   ray-extract  media: read, checkpoints: read,         (shards + pretrained encoder weights in,
#                features: read/write                     features out)
#   ray-train    features: read, checkpoints: read/write (pretrained LLM weights in, checkpoints out)
#   ray-chain    media, features, checkpoints: read/write (one RayJob runs every stage)
#   mlflow       mlflow: read/write                      (only the server touches artifacts: it
#                                                          proxies uploads, so Ray pods never do)

locals {
  irsa_roles = {
    ingest  = { service_account = "ray-ingest", read = [], write = ["media"] }
    extract = { service_account = "ray-extract", read = ["media", "checkpoints"], write = ["features"] }
    train   = { service_account = "ray-train", read = ["features"], write = ["checkpoints"] }
    chain   = { service_account = "ray-chain", read = [], write = ["media", "features", "checkpoints"] }
    mlflow  = { service_account = "mlflow", read = [], write = ["mlflow"] }
  }

  # What s3fs needs: listing and locating the bucket, objects in and out, and multipart uploads
  # (large shards) including aborting them when a writer fails.
  s3_bucket_read_actions  = ["s3:ListBucket", "s3:GetBucketLocation"]
  s3_bucket_write_actions = ["s3:ListBucketMultipartUploads"]
  s3_object_read_actions  = ["s3:GetObject"]
  s3_object_write_actions = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]

  irsa_policies = {
    for role, cfg in local.irsa_roles : role => {
      Version = "2012-10-17"
      Statement = concat(
        [for b in distinct(concat(cfg.read, cfg.write)) : {
          Sid      = "Bucket${title(b)}"
          Effect   = "Allow"
          Action   = contains(cfg.write, b) ? concat(local.s3_bucket_read_actions, local.s3_bucket_write_actions) : local.s3_bucket_read_actions
          Resource = [aws_s3_bucket.this[b].arn]
        }],
        [for b in distinct(concat(cfg.read, cfg.write)) : {
          Sid      = "Objects${title(b)}"
          Effect   = "Allow"
          Action   = contains(cfg.write, b) ? concat(local.s3_object_read_actions, local.s3_object_write_actions) : local.s3_object_read_actions
          Resource = ["${aws_s3_bucket.this[b].arn}/*"]
        }],
        # SSE-KMS: reading needs Decrypt, writing also GenerateDataKey, on the project key only.
        local.use_kms ? [{
          Sid      = "DataKey"
          Effect   = "Allow"
          Action   = length(cfg.write) > 0 ? ["kms:Decrypt", "kms:GenerateDataKey"] : ["kms:Decrypt"]
          Resource = [aws_kms_key.data[0].arn]
        }] : [],
      )
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa_roles

  name        = "${var.name}-${each.value.service_account}"
  description = "IRSA role for service account ${var.k8s_namespace}/${each.value.service_account}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = aws_iam_openid_connect_provider.eks.arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${local.oidc_issuer}:sub" = "system:serviceaccount:${var.k8s_namespace}:${each.value.service_account}"
          "${local.oidc_issuer}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.irsa_roles

  name   = "${var.name}-${each.key}-data"
  role   = aws_iam_role.irsa[each.key].id
  policy = jsonencode(local.irsa_policies[each.key])
}
