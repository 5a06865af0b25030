# The whole stage-1 stack of one environment: network, EKS, buckets, the MLflow database and
# the IRSA roles, wired together. envs/dev and envs/prod are thin roots that call it with their
# own values (variables.tf: sizes are required, the rest defaults to the production posture).

terraform {
  required_version = ">= 1.10"
  required_providers {
    # 5.100 is the floor because the CI machine's offline provider mirror holds exactly that
    # release; 6.x is admitted so users can upgrade without editing every module.
    aws = { source = "hashicorp/aws", version = ">= 5.100, < 7.0" }
  }
}

locals {
  name = "${var.project}-${var.environment}"
  # Resources also get the provider's default_tags; these make module-level tags explicit for
  # resources created through other services (e.g. EC2 instances of node groups).
  tags = { Project = var.project, Environment = var.environment }
}

data "aws_region" "current" {}

module "kms_storage" {
  source      = "../kms"
  name        = "${local.name}-storage"
  description = "cocoseg ${var.environment}: S3 buckets, the MLflow database and its secret"
  tags        = local.tags
}

module "kms_cluster" {
  source             = "../kms"
  name               = "${local.name}-cluster"
  description        = "cocoseg ${var.environment}: EKS secrets, node volumes, control-plane and flow logs"
  service_principals = ["logs.${data.aws_region.current.id}.amazonaws.com"]
  tags               = local.tags
}

module "network" {
  source             = "../network"
  name               = local.name
  cluster_name       = local.name
  cidr_block         = var.vpc_cidr
  azs                = var.azs
  single_nat_gateway = var.single_nat_gateway
  logs_kms_key_arn   = module.kms_cluster.key_arn
  tags               = local.tags
}

module "eks" {
  source                 = "../eks"
  cluster_name           = local.name
  kubernetes_version     = var.kubernetes_version
  private_subnet_ids     = module.network.private_subnet_ids
  kms_key_arn            = module.kms_cluster.key_arn
  endpoint_public_access = var.eks_endpoint_public_access
  public_access_cidrs    = var.eks_public_access_cidrs
  admin_role_arns        = var.eks_admin_role_arns
  cpu_instance_types     = var.cpu_instance_types
  cpu_min_size           = var.cpu_min_size
  cpu_max_size           = var.cpu_max_size
  gpu_instance_types     = var.gpu_instance_types
  gpus_per_node          = var.gpus_per_node
  gpu_capacity_type      = var.gpu_capacity_type
  gpu_min_size           = var.gpu_min_size
  gpu_max_size           = var.gpu_max_size
  tags                   = local.tags
}

module "storage" {
  source                    = "../storage"
  name_prefix               = local.name
  kms_key_arn               = module.kms_storage.key_arn
  checkpoint_retention_days = var.checkpoint_retention_days
  force_destroy             = var.force_destroy_buckets
  tags                      = local.tags
}

module "mlflow_db" {
  source                   = "../mlflow-db"
  name                     = "${local.name}-mlflow"
  vpc_id                   = module.network.vpc_id
  private_subnet_ids       = module.network.private_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn              = module.kms_storage.key_arn
  instance_class           = var.db_instance_class
  multi_az                 = var.db_multi_az
  deletion_protection      = var.db_deletion_protection
  backup_retention_days    = var.db_backup_retention_days
  tags                     = local.tags
}

module "iam" {
  source                 = "../iam"
  name                   = local.name
  cluster_name           = module.eks.cluster_name
  oidc_provider_arn      = module.eks.oidc_provider_arn
  oidc_issuer            = module.eks.oidc_issuer
  data_bucket_arn        = module.storage.bucket_arns["data"]
  checkpoints_bucket_arn = module.storage.bucket_arns["checkpoints"]
  artifacts_bucket_arn   = module.storage.bucket_arns["artifacts"]
  storage_kms_key_arn    = module.kms_storage.key_arn
  db_secret_arn          = module.mlflow_db.master_user_secret_arn
  db_kms_key_arn         = module.kms_storage.key_arn
  tags                   = local.tags
}
