variable "name_prefix" {
  description = "Prefix of the bucket names (the account ID is appended for global uniqueness)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS on every bucket."
  type        = string
}

variable "checkpoint_retention_days" {
  description = "Days after which checkpoints under runs/ expire (must exceed the 30-day IA transition)."
  type        = number
  default     = 90

  validation {
    condition     = var.checkpoint_retention_days > 30
    error_message = "checkpoint_retention_days must be greater than 30 (objects move to STANDARD_IA at day 30)."
  }
}

variable "noncurrent_version_days" {
  description = "Days a superseded object version is kept."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Let terraform destroy non-empty buckets (dev only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource (the provider's default_tags are added as well)."
  type        = map(string)
  default     = {}
}
