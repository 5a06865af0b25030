# Inputs of stage 2 (../../platform reads them through terraform_remote_state) and of kubectl.

output "region" {
  description = "AWS region."
  value       = module.stack.region
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = module.stack.cluster_name
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${module.stack.region} --name ${module.stack.cluster_name}"
}

output "bucket_names" {
  description = "S3 buckets: data, checkpoints, artifacts."
  value       = module.stack.bucket_names
}

output "irsa_role_arns" {
  description = "IRSA role ARNs: ray, mlflow, external_secrets, cluster_autoscaler."
  value       = module.stack.irsa_role_arns
}

output "mlflow_db" {
  description = "MLflow database endpoint and the ARN of its RDS-managed secret (no password)."
  value       = module.stack.mlflow_db
}
