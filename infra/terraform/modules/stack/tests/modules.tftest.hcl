# Plan-time checks of the stack and its modules with the mocked aws provider (../../mocks): no
# credentials, no network, nothing created. Run here: terraform init -backend=false && terraform test
# (envs/*/tests plan each environment's own settings).

mock_provider "aws" {
  source = "../../mocks"
}

variables {
  environment        = "t"
  vpc_cidr           = "10.0.0.0/16"
  azs                = ["us-west-2a", "us-west-2b"]
  cpu_instance_types = ["m6i.large"]
  cpu_min_size       = 1
  cpu_max_size       = 2
  gpu_instance_types = ["g6.xlarge"]
  gpus_per_node      = 1
  gpu_max_size       = 1
  db_instance_class  = "db.t4g.medium"
}

run "stack_outputs" {
  command = plan

  assert {
    condition     = toset(keys(output.bucket_names)) == toset(["data", "checkpoints", "artifacts"])
    error_message = "the stack must create exactly the data, checkpoints and artifacts buckets"
  }

  assert {
    condition     = toset(keys(output.irsa_role_arns)) == toset(["ray", "mlflow", "external_secrets", "cluster_autoscaler"])
    error_message = "unexpected set of IRSA roles"
  }

  assert {
    condition     = !anytrue([for k in keys(output.mlflow_db) : strcontains(lower(k), "password")])
    error_message = "the database password must never be an output"
  }

  assert {
    condition     = strcontains(output.kubeconfig_command, "--name cocoseg-t")
    error_message = "kubeconfig command must name the environment's cluster"
  }
}

run "buckets_are_encrypted_versioned_private" {
  command = plan

  module {
    source = "../storage"
  }

  variables {
    name_prefix = "t"
    kms_key_arn = "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
  }

  assert {
    condition = alltrue(flatten([for c in aws_s3_bucket_server_side_encryption_configuration.this : [
      for r in c.rule : [for d in r.apply_server_side_encryption_by_default : d.sse_algorithm == "aws:kms" && d.kms_master_key_id == var.kms_key_arn]
    ]]))
    error_message = "every bucket must use SSE-KMS with the given key"
  }

  assert {
    condition     = length(aws_s3_bucket_server_side_encryption_configuration.this) == length(aws_s3_bucket.this)
    error_message = "a bucket lacks an encryption configuration"
  }

  assert {
    condition     = alltrue([for v in aws_s3_bucket_versioning.this : v.versioning_configuration[0].status == "Enabled"])
    error_message = "every bucket must be versioned"
  }

  assert {
    condition = alltrue([for p in aws_s3_bucket_public_access_block.this :
    p.block_public_acls && p.block_public_policy && p.ignore_public_acls && p.restrict_public_buckets])
    error_message = "every bucket must block all public access"
  }

  assert {
    condition     = length([for r in aws_s3_bucket_lifecycle_configuration.this["checkpoints"].rule : r if r.id == "expire-old-checkpoints"]) == 1
    error_message = "the checkpoints bucket must expire old checkpoints"
  }
}

run "eks_private_imdsv2_gpu_tainted" {
  command = plan

  module {
    source = "../eks"
  }

  variables {
    cluster_name       = "t"
    private_subnet_ids = ["subnet-a", "subnet-b"]
    kms_key_arn        = "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_public_access == false && aws_eks_cluster.this.vpc_config[0].endpoint_private_access
    error_message = "the API endpoint must be private by default"
  }

  assert {
    condition     = one(aws_eks_cluster.this.encryption_config[0].resources) == "secrets"
    error_message = "Kubernetes secrets must be KMS-encrypted"
  }

  assert {
    condition     = length(aws_eks_cluster.this.enabled_cluster_log_types) == 5
    error_message = "all five control-plane log types must be enabled"
  }

  assert {
    condition     = alltrue([for lt in aws_launch_template.node : lt.metadata_options[0].http_tokens == "required" && lt.metadata_options[0].http_put_response_hop_limit == 1])
    error_message = "node launch templates must require IMDSv2 with hop limit 1"
  }

  assert {
    condition     = aws_eks_node_group.gpu.ami_type == "AL2023_x86_64_NVIDIA" && anytrue([for t in aws_eks_node_group.gpu.taint : t.key == "nvidia.com/gpu" && t.effect == "NO_SCHEDULE"])
    error_message = "the GPU node group must use the AL2023 NVIDIA AMI and carry the nvidia.com/gpu taint"
  }
}

run "eks_rejects_world_open_api" {
  command = plan

  module {
    source = "../eks"
  }

  variables {
    cluster_name           = "t"
    private_subnet_ids     = ["subnet-a", "subnet-b"]
    kms_key_arn            = "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
    endpoint_public_access = true
    public_access_cidrs    = ["0.0.0.0/0"]
  }

  expect_failures = [var.public_access_cidrs]
}

run "network_needs_two_azs" {
  command = plan

  module {
    source = "../network"
  }

  variables {
    name             = "t"
    cluster_name     = "t"
    azs              = ["us-west-2a"]
    logs_kms_key_arn = "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
  }

  expect_failures = [var.azs]
}

run "database_encrypted_private_managed_secret" {
  command = plan

  module {
    source = "../mlflow-db"
  }

  variables {
    name                     = "t"
    vpc_id                   = "vpc-123"
    private_subnet_ids       = ["subnet-a", "subnet-b"]
    client_security_group_id = "sg-123"
    kms_key_arn              = "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
  }

  assert {
    condition     = aws_db_instance.this.storage_encrypted && aws_db_instance.this.kms_key_id == var.kms_key_arn
    error_message = "the database must be KMS-encrypted"
  }

  assert {
    condition     = !aws_db_instance.this.publicly_accessible && aws_db_instance.this.manage_master_user_password
    error_message = "the database must be private with an RDS-managed password"
  }

  assert {
    condition     = aws_db_instance.this.password == null
    error_message = "no password may be set through Terraform"
  }

  assert {
    condition     = aws_db_instance.this.deletion_protection && aws_db_instance.this.backup_retention_period >= 1
    error_message = "module defaults must protect the database and keep backups"
  }

  assert {
    condition     = can(regex("^t-final-[0-9]{14}$", aws_db_instance.this.final_snapshot_identifier)) && !aws_db_instance.this.skip_final_snapshot
    error_message = "the final snapshot must be named per instance (a fixed name fails the second destroy)"
  }
}
