variable "region" {
  description = "AWS region of the stage-1 stack."
  type        = string
}

variable "environment" {
  description = "Environment name (dev, prod)."
  type        = string
}

variable "owner" {
  description = "Owner tag."
  type        = string
}

variable "cost_center" {
  description = "CostCenter tag."
  type        = string
}

variable "state_bucket" {
  description = "S3 bucket holding the stage-1 state."
  type        = string
}

variable "stack_state_key" {
  description = "State key of the stage-1 root, e.g. cocoseg/dev/terraform.tfstate."
  type        = string
}

variable "ray_namespace" {
  description = "Namespace of the Ray clusters and jobs (must match the IRSA trust in stage 1)."
  type        = string
  default     = "ray"
}

variable "mlflow_namespace" {
  description = "Namespace of the MLflow tracking server (must match the IRSA trust in stage 1)."
  type        = string
  default     = "mlflow"
}

variable "enable_raycronjob" {
  description = "Turn on KubeRay's alpha RayCronJob feature gate (KubeRay >= 1.6) for infra/k8s/raycronjob-retrain.yaml."
  type        = bool
  default     = false
}

variable "kuberay_chart_version" {
  description = "kuberay-operator chart version; the CRD schemas the tests validate against are pinned to it."
  type        = string
  default     = "1.7.0"
}

variable "nvidia_device_plugin_chart_version" {
  description = "nvidia-device-plugin chart version."
  type        = string
  default     = "0.18.0"
}

variable "cluster_autoscaler_chart_version" {
  description = "cluster-autoscaler chart version (its app version should match the Kubernetes minor)."
  type        = string
  default     = "9.46.6"
}

variable "external_secrets_chart_version" {
  description = "external-secrets chart version."
  type        = string
  default     = "0.20.3"
}

variable "mlflow_chart_version" {
  description = "community-charts mlflow chart version; the values schema the tests use is pinned to it."
  type        = string
  default     = "1.11.5"
}
