# dev: small, cheap and disposable. This root holds only what is dev's own: the state backend,
# the provider settings and the settings that differ from the stack's production defaults
# (modules/stack/variables.tf). Stage 2 (../../platform) reads output "stack" from this state.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.100, < 7.0" }
  }
  # bucket, key and region come from backend.hcl (terraform init -backend-config=backend.hcl);
  # use_lockfile is S3-native state locking (Terraform >= 1.10), no DynamoDB table.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = "us-west-2"
  default_tags {
    tags = { Project = "cocoseg", Environment = "dev", Owner = "ml-platform", CostCenter = "ml-research", ManagedBy = "terraform" }
  }
}

module "stack" {
  source      = "../../modules/stack"
  environment = "dev"
  vpc_cidr    = "10.20.0.0/16"
  azs         = ["us-west-2a", "us-west-2b"]

  # Cheaper than prod: one NAT gateway, spot GPUs, a single-AZ database that a destroy removes
  # with the buckets' contents, shorter retention.
  single_nat_gateway        = true
  gpu_capacity_type         = "SPOT"
  force_destroy_buckets     = true
  checkpoint_retention_days = 45
  db_instance_class         = "db.t4g.medium"
  db_multi_az               = false
  db_deletion_protection    = false
  db_backup_retention_days  = 3

  cpu_instance_types = ["m6i.2xlarge"]
  cpu_min_size       = 2
  cpu_max_size       = 6
  # 4 single-L4 nodes = 4 GPUs: the RayJobs' largest GPU ask (train: 4 workers; tune: 2 trials
  # x 2 workers), checked by tests/test_infra_k8s.py against both environments.
  gpu_instance_types = ["g6.xlarge"]
  gpus_per_node      = 1
  gpu_max_size       = 4

  # For a throwaway cluster reachable without a VPN: eks_endpoint_public_access = true and
  # eks_public_access_cidrs = ["<your office /32>"]. Cluster-admin roles besides the creator:
  # eks_admin_role_arns = ["arn:aws:iam::<account>:role/<name>"].
}

output "stack" {
  description = "Everything stage 2 and kubectl need: region, cluster, buckets, IRSA roles, MLflow database (no password)."
  value       = module.stack
}
