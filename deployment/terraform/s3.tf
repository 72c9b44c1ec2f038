# Two buckets: the artifact backups (DC_S3_BUCKET, the tasks' prefix only) and the access
# logs of the load balancer and of the artifact bucket. Both private, versioned, TLS-only.

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice per account; the artifacts are rebuilt by retraining from the database, and versioning covers mistakes.
  #checkov:skip=CKV2_AWS_62:No consumer of object events: tasks read artifacts by key when a version is missing locally.
  bucket = local.artifacts_bucket
}

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_144:Access logs are not replicated; they expire after access_logs_retention_days.
  #checkov:skip=CKV2_AWS_62:No consumer of object events on the log bucket.
  #checkov:skip=CKV_AWS_18:This is the access-log bucket: logging it into itself would loop.
  #checkov:skip=CKV_AWS_145:ALB access logs support SSE-S3 only (not SSE-KMS); the bucket uses SSE-S3.
  bucket = "${local.name}-logs-${local.account_id}"
}

resource "aws_s3_bucket_public_access_block" "bucket" {
  for_each                = { artifacts = aws_s3_bucket.artifacts.id, logs = aws_s3_bucket.logs.id }
  bucket                  = each.value
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "bucket" {
  for_each = { artifacts = aws_s3_bucket.artifacts.id, logs = aws_s3_bucket.logs.id }
  bucket   = each.value
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "bucket" {
  for_each = { artifacts = aws_s3_bucket.artifacts.id, logs = aws_s3_bucket.logs.id }
  bucket   = each.value
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_logging" "artifacts" {
  bucket        = aws_s3_bucket.artifacts.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3/${local.artifacts_bucket}/"

  # S3 checks that the log bucket's policy lets the logging service write.
  depends_on = [aws_s3_bucket_policy.bucket]
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "old-versions-expire"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.artifacts_noncurrent_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.bucket]
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "logs-expire"
    status = "Enabled"
    filter {}
    expiration {
      days = var.access_logs_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.bucket]
}

data "aws_elb_service_account" "main" {}

data "aws_iam_policy_document" "tls_only" {
  for_each = { artifacts = aws_s3_bucket.artifacts.arn, logs = aws_s3_bucket.logs.arn }

  statement {
    sid       = "TLSOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value, "${each.value}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # The load balancer's log delivery (the region's ELB account) and S3's server access logging.
  dynamic "statement" {
    for_each = each.key == "logs" ? [1] : []
    content {
      sid       = "ALBAccessLogs"
      actions   = ["s3:PutObject"]
      resources = ["${each.value}/alb/AWSLogs/${local.account_id}/*"]
      principals {
        type        = "AWS"
        identifiers = [data.aws_elb_service_account.main.arn]
      }
    }
  }
  dynamic "statement" {
    for_each = each.key == "logs" ? [1] : []
    content {
      sid       = "S3ServerAccessLogs"
      actions   = ["s3:PutObject"]
      resources = ["${each.value}/s3/*"]
      principals {
        type        = "Service"
        identifiers = ["logging.s3.amazonaws.com"]
      }
      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [local.account_id]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "bucket" {
  for_each = { artifacts = aws_s3_bucket.artifacts.id, logs = aws_s3_bucket.logs.id }
  bucket   = each.value
  policy   = data.aws_iam_policy_document.tls_only[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.bucket]
}
