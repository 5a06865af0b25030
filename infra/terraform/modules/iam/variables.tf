variable "name" {
  description = "Name prefix of the roles."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name (scopes the autoscaler's tag condition and node-group ARNs)."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider."
  type        = string
}

variable "oidc_issuer" {
  description = "OIDC issuer without https:// (e.g. oidc.eks.us-west-2.amazonaws.com/id/ABC)."
  type        = string
}

variable "data_bucket_arn" {
  description = "ARN of the data bucket (COCO source under coco/, snapshots under snapshots/)."
  type        = string
}

variable "checkpoints_bucket_arn" {
  description = "ARN of the checkpoints bucket."
  type        = string
}

variable "artifacts_bucket_arn" {
  description = "ARN of the MLflow artifacts bucket."
  type        = string
}

variable "storage_kms_key_arn" {
  description = "KMS key of the buckets."
  type        = string
}

variable "db_secret_arn" {
  description = "ARN of the RDS-managed master-user secret."
  type        = string
}

variable "db_kms_key_arn" {
  description = "KMS key that encrypts the database secret."
  type        = string
}

variable "ray_namespace" {
  description = "Namespace of the Ray pods."
  type        = string
  default     = "ray"
}

variable "ray_service_account" {
  description = "Service account of every Ray pod (head, workers, job submitter)."
  type        = string
  default     = "ray"
}

variable "mlflow_namespace" {
  description = "Namespace of the MLflow tracking server."
  type        = string
  default     = "mlflow"
}

variable "mlflow_service_account" {
  description = "Service account of the MLflow tracking server."
  type        = string
  default     = "mlflow"
}

variable "external_secrets_namespace" {
  description = "Namespace of the External Secrets Operator."
  type        = string
  default     = "external-secrets"
}

variable "external_secrets_service_account" {
  description = "Service account of the External Secrets Operator."
  type        = string
  default     = "external-secrets"
}

variable "tags" {
  description = "Tags added to every resource (the provider's default_tags are added as well)."
  type        = map(string)
  default     = {}
}
