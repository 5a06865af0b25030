# Lifecycle: every bucket aborts stale multipart uploads (Ray and MLflow upload large files in
# parts and a killed job leaves them behind, billed) and expires old noncurrent versions.
# Checkpoints additionally expire after checkpoint_retention_days: the model that matters is
# registered in MLflow, so old runs' checkpoints are only resume points.

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id

  rule {
    id     = "abort-incomplete-multipart"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  dynamic "rule" {
    for_each = each.key == "checkpoints" ? [1] : []
    content {
      id     = "expire-old-checkpoints"
      status = "Enabled"

      filter {
        prefix = "runs/"
      }

      abort_incomplete_multipart_upload {
        days_after_initiation = 7
      }

      transition {
        days          = 30
        storage_class = "STANDARD_IA"
      }

      expiration {
        days = var.checkpoint_retention_days
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}
