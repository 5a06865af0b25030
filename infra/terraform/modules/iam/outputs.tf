output "role_arns" {
  description = "IRSA role ARNs by workload: ray, mlflow, external_secrets, cluster_autoscaler."
  value       = { for k, r in aws_iam_role.irsa : k => r.arn }
}
