terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 7.0"
    }
  }

  # Partial configuration: bucket, key and region come from backend.hcl
  # (terraform init -backend-config=backend.hcl). use_lockfile is S3-native state locking
  # (Terraform >= 1.10), so no DynamoDB table is needed.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
