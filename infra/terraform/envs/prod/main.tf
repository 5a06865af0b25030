# prod: the stack's defaults are the production posture (per-AZ NAT gateways, multi-AZ database
# with deletion protection, buckets kept on destroy, on-demand GPUs, private API), so this root
# names only its state backend, provider settings and sizes. tests/test_infra_terraform.py
# checks the effective prod settings.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.100, < 7.0" }
  }
  backend "s3" { # bucket, key and region: backend.hcl
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = "us-west-2"
  default_tags {
    tags = { Project = "cocoseg", Environment = "prod", Owner = "ml-platform", CostCenter = "ml-production", ManagedBy = "terraform" }
  }
}

module "stack" {
  source      = "../../modules/stack"
  environment = "prod"
  vpc_cidr    = "10.30.0.0/16"
  azs         = ["us-west-2a", "us-west-2b", "us-west-2c"]

  db_instance_class = "db.m6g.large"
  # Sized by the capacity model (docs/scaling.md, sections 3.5-3.6): one GPU type for both 1-day
  # COCO runs, n on 1 node (4 L4) and x on 8 (32 L4, ~21 h); up to 8 x 4 = 32 GPUs, scaling
  # from zero while no job runs. The input actors (1 CPU each) run on the CPU group: since the
  # input stage of issue 21 one node holds those of either run, so 2 always on (head + actors).
  gpu_instance_types = ["g6.12xlarge"]
  gpus_per_node      = 4
  gpu_max_size       = 8
  cpu_instance_types = ["m6i.4xlarge"]
  cpu_min_size       = 2
  cpu_max_size       = 20
}

output "stack" {
  description = "Inputs of stage 2 (../../platform, through terraform_remote_state) and of kubectl."
  value       = module.stack
}
