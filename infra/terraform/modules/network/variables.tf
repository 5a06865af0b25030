variable "name" {
  description = "Name prefix for the VPC and its resources."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name, used in the subnet discovery tags."
  type        = string
}

variable "cidr_block" {
  description = "VPC CIDR (a /16 is expected: subnets are cut as /20 public and /18 private)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && endswith(var.cidr_block, "/16")
    error_message = "cidr_block must be a valid /16 CIDR."
  }
}

variable "azs" {
  description = "Availability zones (at least 2, at most 3), e.g. [\"us-west-2a\", \"us-west-2b\"]."
  type        = list(string)

  validation {
    condition     = length(var.azs) >= 2 && length(var.azs) <= 3
    error_message = "Give 2 or 3 availability zones: EKS needs subnets in at least two."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all AZs (cheaper, one AZ is a single point of failure) instead of one per AZ."
  type        = bool
  default     = false
}

variable "logs_kms_key_arn" {
  description = "KMS key ARN that encrypts the flow-log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the VPC flow logs in days."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource (the provider's default_tags are added as well)."
  type        = map(string)
  default     = {}
}
