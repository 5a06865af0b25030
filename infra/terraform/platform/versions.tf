terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 7.0"
    }
    # helm 3.x: `kubernetes = {}` is an attribute and `set` a list (the 2.x block syntax fails).
    helm = {
      source  = "hashicorp/helm"
      version = ">= 3.0, < 4.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.36, < 3.0"
    }
  }

  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
