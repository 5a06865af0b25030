# IRSA roles (IAM roles assumed by one Kubernetes service account each through the cluster's
# OIDC provider). Every action is named and every resource is a specific bucket, prefix, key
# or secret ARN; the only "*" resources are the cluster autoscaler's Describe calls, which AWS
# does not support at resource level (see autoscaler.tf).

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.100, < 7.0" }
  }
}

locals {
  irsa = {
    ray = {
      namespace       = var.ray_namespace
      service_account = var.ray_service_account
    }
    mlflow = {
      namespace       = var.mlflow_namespace
      service_account = var.mlflow_service_account
    }
    external_secrets = {
      namespace       = var.external_secrets_namespace
      service_account = var.external_secrets_service_account
    }
    cluster_autoscaler = {
      namespace       = "kube-system"
      service_account = "cluster-autoscaler"
    }
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = local.irsa

  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${each.value.namespace}:${each.value.service_account}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each           = local.irsa
  name_prefix        = "${var.name}-${replace(each.key, "_", "-")}-"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
  tags               = merge(var.tags, { ServiceAccount = "${each.value.namespace}/${each.value.service_account}" })
}

# Ray pods: read the whole data bucket, write only the snapshot prefix (ingest output), and
# read/write the checkpoints (Ray Train storage_path) and MLflow artifact buckets.
data "aws_iam_policy_document" "ray" {
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [var.data_bucket_arn, var.checkpoints_bucket_arn, var.artifacts_bucket_arn]
  }

  statement {
    sid       = "ReadData"
    actions   = ["s3:GetObject"]
    resources = ["${var.data_bucket_arn}/*"]
  }

  statement {
    sid = "WriteSnapshots"
    actions = [
      "s3:AbortMultipartUpload",
      "s3:DeleteObject",
      "s3:ListMultipartUploadParts",
      "s3:PutObject",
    ]
    resources = ["${var.data_bucket_arn}/snapshots/*"]
  }

  statement {
    sid       = "ReadWriteCheckpointsAndArtifacts"
    actions   = local.object_read_write
    resources = ["${var.checkpoints_bucket_arn}/*", "${var.artifacts_bucket_arn}/*"]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"]
    resources = [var.storage_kms_key_arn]
  }
}

# MLflow tracking server (proxied artifact storage): read/write the artifact bucket only.
data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListArtifactBucket"
    actions   = ["s3:GetBucketLocation", "s3:ListBucket"]
    resources = [var.artifacts_bucket_arn]
  }

  statement {
    sid       = "ReadWriteArtifacts"
    actions   = local.object_read_write
    resources = ["${var.artifacts_bucket_arn}/*"]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"]
    resources = [var.storage_kms_key_arn]
  }
}

# External Secrets Operator: read the RDS-managed master secret, nothing else.
data "aws_iam_policy_document" "external_secrets" {
  statement {
    sid       = "ReadDatabaseSecret"
    actions   = ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    resources = [var.db_secret_arn]
  }

  statement {
    sid       = "DecryptDatabaseSecret"
    actions   = ["kms:Decrypt"]
    resources = [var.db_kms_key_arn]
  }
}

locals {
  # What the ray and mlflow roles may do with the objects under their prefixes.
  object_read_write = ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:PutObject"]
  role_policies = {
    ray                = data.aws_iam_policy_document.ray.json
    mlflow             = data.aws_iam_policy_document.mlflow.json
    external_secrets   = data.aws_iam_policy_document.external_secrets.json
    cluster_autoscaler = data.aws_iam_policy_document.cluster_autoscaler.json
  }
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.role_policies
  name     = "least-privilege"
  role     = aws_iam_role.irsa[each.key].id
  policy   = each.value
}
