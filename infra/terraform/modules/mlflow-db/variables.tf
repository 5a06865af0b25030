variable "name" {
  description = "Name prefix of the database resources."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (>= 2 AZs) for the DB subnet group."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "Security group allowed to connect on 5432 (the EKS cluster security group)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for storage, Performance Insights and the master-password secret."
  type        = string
}

variable "engine_version" {
  description = "PostgreSQL version (major.minor)."
  type        = string
  default     = "16.8"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "allocated_storage_gib" {
  description = "Initial storage in GiB."
  type        = number
  default     = 20
}

variable "max_allocated_storage_gib" {
  description = "Storage autoscaling ceiling in GiB."
  type        = number
  default     = 100
}

variable "multi_az" {
  description = "Standby replica in a second AZ."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Refuse to delete the database (set true in prod)."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Automated backup retention in days (1-35)."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be 1-35: backups cannot be turned off."
  }
}

variable "tags" {
  description = "Tags added to every resource (the provider's default_tags are added as well)."
  type        = map(string)
  default     = {}
}
