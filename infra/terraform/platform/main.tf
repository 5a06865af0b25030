# Stage 2: in-cluster platform on the EKS cluster of one stage-1 environment (envs/<env>).
# Kept in its own root because the kubernetes/helm providers need a running cluster: one root
# holding both breaks plans and destroys (see infra/README.md, "Why two stages").
#
# Installs: KubeRay operator, NVIDIA device plugin, cluster autoscaler, External Secrets
# Operator, the MLflow tracking server (RDS Postgres backend, S3 artifacts, basic auth), the
# ray and mlflow namespaces and the IRSA-annotated ray service account.

data "terraform_remote_state" "stack" {
  backend = "s3"
  config = {
    bucket = var.state_bucket
    key    = var.stack_state_key
    region = var.region
  }
}

locals {
  stack        = data.terraform_remote_state.stack.outputs.stack # envs/<env>: output "stack"
  cluster_name = local.stack.cluster_name
  roles        = local.stack.irsa_role_arns
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project     = "cocoseg"
      Environment = var.environment
      Owner       = var.owner
      CostCenter  = var.cost_center
      ManagedBy   = "terraform"
    }
  }
}

data "aws_eks_cluster" "this" {
  name = local.cluster_name
}

# Short-lived token fetched at plan/apply time (no long-lived kubeconfig credentials).
data "aws_eks_cluster_auth" "this" {
  name = local.cluster_name
}

provider "kubernetes" {
  host                   = data.aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}

provider "helm" {
  kubernetes = {
    host                   = data.aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
    token                  = data.aws_eks_cluster_auth.this.token
  }
}

resource "kubernetes_namespace_v1" "workload" {
  for_each = toset([var.ray_namespace, var.mlflow_namespace])

  metadata {
    name = each.value
    labels = {
      # Our pod specs meet "restricted"; enforce "baseline" only, because containers that the
      # KubeRay operator and the MLflow chart inject (init containers, sidecars) are outside our
      # control. Any "restricted" violation still shows up as a warning and in the audit log.
      "pod-security.kubernetes.io/enforce" = "baseline"
      "pod-security.kubernetes.io/warn"    = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
    }
  }
}

resource "kubernetes_service_account_v1" "ray" {
  metadata {
    name      = "ray"
    namespace = kubernetes_namespace_v1.workload[var.ray_namespace].metadata[0].name
    annotations = {
      "eks.amazonaws.com/role-arn" = local.roles["ray"]
    }
  }
}
