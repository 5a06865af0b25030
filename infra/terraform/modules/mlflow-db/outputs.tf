# Only addresses and the secret's ARN leave this module; the password never does.

output "address" {
  description = "Hostname of the database."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the database."
  value       = aws_db_instance.this.port
}

output "database" {
  description = "Name of the MLflow tracking database."
  value       = aws_db_instance.this.db_name
}

output "master_user_secret_arn" {
  description = "ARN of the Secrets Manager secret (JSON with username and password) that RDS manages."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}
