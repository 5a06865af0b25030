output "region" {
  description = "AWS region of the stack."
  value       = data.aws_region.current.id
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = module.eks.cluster_name
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${data.aws_region.current.id} --name ${module.eks.cluster_name}"
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint (private unless eks_endpoint_public_access)."
  value       = module.eks.cluster_endpoint
}

output "bucket_names" {
  description = "S3 bucket names: data, checkpoints, artifacts."
  value       = module.storage.bucket_names
}

output "irsa_role_arns" {
  description = "IRSA role ARNs: ray, mlflow, external_secrets, cluster_autoscaler."
  value       = module.iam.role_arns
}

output "mlflow_db" {
  description = "MLflow database address, port, database name and the ARN of its RDS-managed secret (never the password)."
  value = {
    address    = module.mlflow_db.address
    port       = module.mlflow_db.port
    database   = module.mlflow_db.database
    secret_arn = module.mlflow_db.master_user_secret_arn
  }
}
