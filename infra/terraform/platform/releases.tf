# Helm releases, every chart pinned by version (variables.tf).

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  namespace        = "kuberay-system"
  create_namespace = true
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_chart_version
  values = [templatefile("${path.module}/values/kuberay-operator.yaml.tftpl", {
    enable_raycronjob = var.enable_raycronjob
  })]
}

resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version
  values           = [file("${path.module}/values/nvidia-device-plugin.yaml")]
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  namespace  = "kube-system"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version
  values = [templatefile("${path.module}/values/cluster-autoscaler.yaml.tftpl", {
    cluster_name = local.cluster_name
    region       = var.region
    role_arn     = local.roles["cluster_autoscaler"]
  })]
}

resource "helm_release" "external_secrets" {
  name             = "external-secrets"
  namespace        = "external-secrets"
  create_namespace = true
  repository       = "https://charts.external-secrets.io"
  chart            = "external-secrets"
  version          = var.external_secrets_chart_version
  values = [templatefile("${path.module}/values/external-secrets.yaml.tftpl", {
    role_arn = local.roles["external_secrets"]
  })]
}

resource "helm_release" "mlflow" {
  name       = "mlflow"
  namespace  = kubernetes_namespace_v1.workload[var.mlflow_namespace].metadata[0].name
  repository = "https://community-charts.github.io/helm-charts"
  chart      = "mlflow"
  version    = var.mlflow_chart_version
  # The database secrets come from External Secrets (infra/k8s/platform/mlflow-db-secret.yaml);
  # the pod waits for them, so do not block the apply on readiness.
  wait = false
  values = [templatefile("${path.module}/values/mlflow.yaml.tftpl", {
    db_host          = local.stack.mlflow_db.address
    artifacts_bucket = local.stack.bucket_names["artifacts"]
    role_arn         = local.roles["mlflow"]
    region           = var.region
  })]

  depends_on = [helm_release.external_secrets]
}
