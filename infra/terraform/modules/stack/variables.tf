# The settings of one environment. Sizes have no default: each env states its own. The rest
# default to the production posture (HA NAT and database, deletion protection, private API,
# buckets kept on destroy), so an environment only names where it is cheaper or more open.

variable "project" {
  description = "Project name, the first part of every resource name."
  type        = string
  default     = "cocoseg"
}

variable "environment" {
  description = "Environment name (dev, prod, ...)."
  type        = string
}

variable "vpc_cidr" {
  description = "VPC CIDR (/16)."
  type        = string
}

variable "azs" {
  description = "Availability zones (2-3)."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One NAT gateway instead of one per AZ."
  type        = bool
  default     = false
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.32"
}

variable "eks_endpoint_public_access" {
  description = "Also expose the Kubernetes API publicly (restricted to eks_public_access_cidrs)."
  type        = bool
  default     = false
}

variable "eks_public_access_cidrs" {
  description = "CIDRs allowed to reach a public API endpoint."
  type        = list(string)
  default     = []
}

variable "eks_admin_role_arns" {
  description = "IAM roles granted cluster-admin."
  type        = list(string)
  default     = []
}

variable "cpu_instance_types" {
  description = "CPU node group instance types."
  type        = list(string)
}

variable "cpu_min_size" {
  description = "CPU node group minimum size."
  type        = number
}

variable "cpu_max_size" {
  description = "CPU node group maximum size."
  type        = number
}

variable "gpu_instance_types" {
  description = "GPU node group instance types."
  type        = list(string)
}

variable "gpus_per_node" {
  description = "GPUs per GPU instance."
  type        = number
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for GPU nodes."
  type        = string
  default     = "ON_DEMAND"
}

variable "gpu_min_size" {
  description = "GPU node group minimum size."
  type        = number
  default     = 0
}

variable "gpu_max_size" {
  description = "GPU node group maximum size."
  type        = number
}

variable "checkpoint_retention_days" {
  description = "Days before checkpoints expire."
  type        = number
  default     = 120
}

variable "force_destroy_buckets" {
  description = "Allow destroying non-empty buckets."
  type        = bool
  default     = false
}

variable "db_instance_class" {
  description = "RDS instance class of the MLflow database."
  type        = string
}

variable "db_multi_az" {
  description = "Multi-AZ MLflow database."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Deletion protection on the MLflow database."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Backup retention of the MLflow database in days."
  type        = number
  default     = 30
}
