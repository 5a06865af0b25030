locals {
  ray_head_service = "cocoseg-head-svc.${var.ray_namespace}.svc.cluster.local"
  mlflow_service   = "mlflow.${var.mlflow_namespace}.svc.cluster.local"
}

output "ray_dashboard_address" {
  description = "In-cluster Ray dashboard / job-submission address of the RayCluster in infra/k8s/raycluster.yaml (RAY_ADDRESS for `ray job submit`)."
  value       = "http://${local.ray_head_service}:8265"
}

output "ray_port_forward_command" {
  description = "Forwards the job-submission port to localhost (then RAY_ADDRESS=http://127.0.0.1:8265)."
  value       = "kubectl -n ${var.ray_namespace} port-forward svc/cocoseg-head-svc 8265:8265"
}

output "mlflow_url" {
  description = "In-cluster MLflow tracking URI (MLFLOW_TRACKING_URI for the Ray jobs)."
  value       = "http://${local.mlflow_service}:80"
}

output "mlflow_port_forward_command" {
  description = "Forwards the MLflow UI to http://127.0.0.1:5000."
  value       = "kubectl -n ${var.mlflow_namespace} port-forward svc/mlflow 5000:80"
}
