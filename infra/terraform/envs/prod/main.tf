# Stage 1 of an environment: everything in AWS (network, EKS, buckets, MLflow database, IRSA
# roles). Stage 2, the in-cluster Helm releases, is ../../platform. envs/dev and envs/prod hold
# identical .tf files (a test keeps them so); only terraform.tfvars and backend.hcl differ.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project     = var.project
      Environment = var.environment
      Owner       = var.owner
      CostCenter  = var.cost_center
      ManagedBy   = "terraform"
    }
  }
}

module "stack" {
  source = "../../modules/stack"

  project                    = var.project
  environment                = var.environment
  vpc_cidr                   = var.vpc_cidr
  azs                        = var.azs
  single_nat_gateway         = var.single_nat_gateway
  kubernetes_version         = var.kubernetes_version
  eks_endpoint_public_access = var.eks_endpoint_public_access
  eks_public_access_cidrs    = var.eks_public_access_cidrs
  eks_admin_role_arns        = var.eks_admin_role_arns
  cpu_instance_types         = var.cpu_instance_types
  cpu_min_size               = var.cpu_min_size
  cpu_max_size               = var.cpu_max_size
  gpu_instance_types         = var.gpu_instance_types
  gpus_per_node              = var.gpus_per_node
  gpu_capacity_type          = var.gpu_capacity_type
  gpu_min_size               = var.gpu_min_size
  gpu_max_size               = var.gpu_max_size
  checkpoint_retention_days  = var.checkpoint_retention_days
  force_destroy_buckets      = var.force_destroy_buckets
  db_instance_class          = var.db_instance_class
  db_multi_az                = var.db_multi_az
  db_deletion_protection     = var.db_deletion_protection
  db_backup_retention_days   = var.db_backup_retention_days
}
