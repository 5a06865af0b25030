variable "cluster_name" {
  description = "EKS cluster name."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane and node groups."
  type        = string
  default     = "1.32"
}

variable "private_subnet_ids" {
  description = "Private subnets (>= 2 AZs) for the control-plane ENIs and the nodes."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for Kubernetes secrets, the control-plane log group and node volumes."
  type        = string
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API publicly as well (restricted to public_access_cidrs). Off by default: reach the private endpoint over VPN/SSM."
  type        = bool
  default     = false
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint when it is enabled."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.public_access_cidrs, "0.0.0.0/0")
    error_message = "public_access_cidrs must not contain 0.0.0.0/0; list your office or VPN ranges."
  }
}

variable "admin_role_arns" {
  description = "IAM role ARNs granted cluster-admin through EKS access entries."
  type        = list(string)
  default     = []
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Ray heads, Ray Data workers, operators, MLflow)."
  type        = list(string)
  default     = ["m6i.2xlarge"]
}

variable "cpu_min_size" {
  description = "Minimum (and initial) size of the CPU node group."
  type        = number
  default     = 2
}

variable "cpu_max_size" {
  description = "Maximum size of the CPU node group."
  type        = number
  default     = 10
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (all with the same GPU count)."
  type        = list(string)
  default     = ["g6.12xlarge"]
}

variable "gpus_per_node" {
  description = "GPUs per instance of gpu_instance_types (scale-from-zero hint for the autoscaler)."
  type        = number
  default     = 4
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU group (Ray Train resumes from checkpoints after a spot loss)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_min_size" {
  description = "Minimum size of the GPU node group (0 lets it scale to zero between trainings)."
  type        = number
  default     = 0
}

variable "gpu_max_size" {
  description = "Maximum size of the GPU node group."
  type        = number
  default     = 2
}

variable "log_retention_days" {
  description = "Retention of the control-plane logs in days."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource (the provider's default_tags are added as well)."
  type        = map(string)
  default     = {}
}
