# Two managed node groups:
#   cpu: Ray head pods, CPU workers for Ray Data (decode/augment), the operators and MLflow;
#   gpu: Ray Train workers. AL2023 NVIDIA AMI, tainted nvidia.com/gpu so only pods that
#        tolerate it (the Ray GPU worker group) land there; it may scale to zero.
# Both use launch templates that require IMDSv2 with a hop limit of 1, so pods cannot reach
# the node's instance role (pods get their own roles through IRSA).

data "aws_iam_policy_document" "node_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.cluster_name}-node-"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

locals {
  node_groups = {
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      capacity_type  = "ON_DEMAND"
      disk_gib       = 100
      min_size       = var.cpu_min_size
      max_size       = var.cpu_max_size
      desired_size   = var.cpu_min_size
      labels         = { "cocoseg.io/node-pool" = "cpu" }
      taints         = []
    }
    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      capacity_type  = var.gpu_capacity_type
      disk_gib       = 200
      min_size       = var.gpu_min_size
      max_size       = var.gpu_max_size
      desired_size   = var.gpu_min_size
      labels         = { "cocoseg.io/node-pool" = "gpu", "nvidia.com/gpu.present" = "true" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
  }
}

resource "aws_launch_template" "node" {
  for_each    = local.node_groups
  name_prefix = "${var.cluster_name}-${each.key}-"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = each.value.disk_gib
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.cluster_name}-${each.key}" })
  }

  tags = var.tags
}

resource "aws_eks_node_group" "cpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "cpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.private_subnet_ids
  ami_type        = local.node_groups.cpu.ami_type
  capacity_type   = local.node_groups.cpu.capacity_type
  instance_types  = local.node_groups.cpu.instance_types
  labels          = local.node_groups.cpu.labels

  launch_template {
    id      = aws_launch_template.node["cpu"].id
    version = aws_launch_template.node["cpu"].latest_version
  }

  scaling_config {
    min_size     = local.node_groups.cpu.min_size
    max_size     = local.node_groups.cpu.max_size
    desired_size = local.node_groups.cpu.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  tags = merge(var.tags, local.autoscaler_tags)

  # The cluster autoscaler owns desired_size once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.private_subnet_ids
  ami_type        = local.node_groups.gpu.ami_type
  capacity_type   = local.node_groups.gpu.capacity_type
  instance_types  = local.node_groups.gpu.instance_types
  labels          = local.node_groups.gpu.labels

  dynamic "taint" {
    for_each = local.node_groups.gpu.taints
    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }

  launch_template {
    id      = aws_launch_template.node["gpu"].id
    version = aws_launch_template.node["gpu"].latest_version
  }

  scaling_config {
    min_size     = local.node_groups.gpu.min_size
    max_size     = local.node_groups.gpu.max_size
    desired_size = local.node_groups.gpu.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  # Scale-from-zero hints: the autoscaler reads these ASG tags to know that a new node would
  # carry GPUs and the taint before any GPU node exists.
  tags = merge(var.tags, local.autoscaler_tags, {
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"   = tostring(var.gpus_per_node)
    "k8s.io/cluster-autoscaler/node-template/label/cocoseg.io/node-pool" = "gpu"
    "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"       = "true:NoSchedule"
  })

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

locals {
  autoscaler_tags = {
    "k8s.io/cluster-autoscaler/enabled"             = "true"
    "k8s.io/cluster-autoscaler/${var.cluster_name}" = "owned"
  }
}
