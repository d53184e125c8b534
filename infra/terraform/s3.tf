# Four buckets, one per kind of data, so that IAM can grant each Ray role exactly the data it
# touches. Every bucket: no public access, encrypted, TLS-only, ACLs disabled, tmp/ and stale
# multipart uploads expire. Versioning where losing an object costs GPU hours or history.

locals {
  buckets = {
    # Webdataset shards from ingestion. Write-once under deterministic names and re-creatable
    # from the sources, so versioning would only double the bill on a re-run.
    media = { versioned = false }
    # The fingerprinted feature store: GPU-days of frozen-encoder output.
    features = { versioned = true }
    # Pretrained weights (pretrained/) and training checkpoints (runs/).
    checkpoints = { versioned = true }
    # MLflow artifacts, written only by the MLflow server (it proxies artifact uploads).
    mlflow = { versioned = true }
  }
  versioned_buckets = { for k, v in local.buckets : k => v if v.versioned }
  # Bucket names are global: account id and region make them unique without a random suffix.
  bucket_prefix = "${var.name}-${data.aws_caller_identity.current.account_id}-${var.region}"
}

resource "aws_s3_bucket" "this" {
  for_each = local.buckets

  bucket        = "${local.bucket_prefix}-${each.key}"
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = aws_s3_bucket.this

  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced" # ACLs off: access is decided by IAM and bucket policy only
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.sse_algorithm
      kms_master_key_id = local.data_key_arn
    }
    # S3 Bucket Keys cut KMS requests (and their cost) by orders of magnitude for many objects.
    bucket_key_enabled = local.use_kms
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.versioned_buckets

  bucket = aws_s3_bucket.this[each.key].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    id     = "expire-tmp"
    status = "Enabled"
    filter {
      prefix = "tmp/"
    }
    expiration {
      days = var.tmp_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {
      prefix = "" # every object
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  dynamic "rule" {
    for_each = local.buckets[each.key].versioned ? [1] : []
    content {
      id     = "expire-noncurrent-versions"
      status = "Enabled"
      filter {
        prefix = "" # every object
      }
      noncurrent_version_expiration {
        noncurrent_days = var.noncurrent_version_expiration_days
      }
      expiration {
        expired_object_delete_marker = true
      }
    }
  }

  # Lifecycle rules on a versioned bucket must be applied after versioning is enabled.
  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [each.value.arn, "${each.value.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOutdatedTls"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [each.value.arn, "${each.value.arn}/*"]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
    ]
  })

  # S3 rejects concurrent configuration calls on one bucket; the policy goes last.
  depends_on = [aws_s3_bucket_public_access_block.this]
}
