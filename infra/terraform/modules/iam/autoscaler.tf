# Cluster autoscaler: grows the CPU/GPU node groups when Ray's autoscaler leaves pods Pending,
# and shrinks them (the GPU group to zero) when they idle.

data "aws_iam_policy_document" "cluster_autoscaler" {
  #checkov:skip=CKV_AWS_356:the Describe* autoscaling/EC2 calls below do not support resource-level permissions; mutations are tag-conditioned
  #checkov:skip=CKV_AWS_111:SetDesiredCapacity/TerminateInstanceInAutoScalingGroup are restricted by the ASG ownership tag condition
  statement {
    # Allowlisted by the project rule (tests/test_infra_terraform.py): these read-only calls
    # accept only Resource "*" (AWS Service Authorization Reference).
    sid = "DescribeOnlyNoResourceLevel"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    # Allowlisted as well: EKS-managed ASG names are generated, so the group is pinned by the
    # ownership tag that the eks module puts on both node groups instead of by ARN.
    sid = "ScaleOwnedNodeGroupsOnly"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.cluster_name}"
      values   = ["owned"]
    }
  }

  statement {
    sid     = "DescribeNodeGroups"
    actions = ["eks:DescribeNodegroup"]
    # "/*" is the generated node-group ID suffix of these two named groups.
    resources = [
      "${local.nodegroup_arn_prefix}/cpu/*",
      "${local.nodegroup_arn_prefix}/gpu/*",
    ]
  }
}

locals {
  nodegroup_arn_prefix = "arn:${data.aws_partition.current.partition}:eks:${data.aws_region.current.id}:${data.aws_caller_identity.current.account_id}:nodegroup/${var.cluster_name}"
}

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
