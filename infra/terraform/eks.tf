# EKS: a control plane with a private endpoint (plus a public one restricted to the operators'
# CIDRs), a CPU node group and a tainted GPU node group, all in private subnets, and the OIDC
# provider that lets service accounts assume IAM roles (IRSA, see iam.tf).

locals {
  # Node labels and the GPU taint; the KubeRay manifests select them (tests/infra checks both sides).
  pool_label_key = "vllama.io/pool"
  gpu_taint      = { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }
  oidc_issuer    = replace(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
}

# --- control plane ---------------------------------------------------------------------------

resource "aws_iam_role" "cluster" {
  name = "${var.name}-eks-cluster"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_cloudwatch_log_group" "cluster" {
  # EKS writes here; creating it ourselves sets the retention (the default keeps logs forever).
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = 30
}

resource "aws_eks_cluster" "this" {
  name                      = var.name
  version                   = var.kubernetes_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = var.cluster_log_types

  vpc_config {
    subnet_ids              = aws_subnet.private[*].id
    endpoint_private_access = true
    endpoint_public_access  = true
    public_access_cidrs     = var.cluster_endpoint_public_access_cidrs
  }

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  depends_on = [aws_iam_role_policy_attachment.cluster, aws_cloudwatch_log_group.cluster]
}

resource "aws_eks_access_entry" "admin" {
  for_each = toset(var.cluster_admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
}

resource "aws_eks_access_policy_association" "admin" {
  for_each = toset(var.cluster_admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  policy_arn    = "arn:${data.aws_partition.current.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
  access_scope {
    type = "cluster"
  }

  depends_on = [aws_eks_access_entry.admin]
}

# IRSA: the cluster's OIDC issuer as an IAM identity provider. IAM trusts the issuer's CA
# itself for EKS, so no certificate thumbprint (and no TLS provider) is needed.
resource "aws_iam_openid_connect_provider" "eks" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
}

# --- nodes -----------------------------------------------------------------------------------

resource "aws_iam_role" "node" {
  name = "${var.name}-eks-node"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# The node role gets only what kubelet, the VPC CNI and image pulls need; pods get their S3
# access from their own IRSA roles, never from the node.
resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset(["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.value}"
}

resource "aws_eks_node_group" "cpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.name}-cpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_STANDARD"
  instance_types  = var.cpu_node_group.instance_types
  capacity_type   = var.cpu_node_group.capacity_type
  disk_size       = var.cpu_node_group.disk_size_gb # image layers + ffmpeg scratch space

  scaling_config {
    min_size     = var.cpu_node_group.min_size
    desired_size = var.cpu_node_group.desired_size
    max_size     = var.cpu_node_group.max_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = { (local.pool_label_key) = "cpu" }


  # Node counts are operated with `aws eks update-nodegroup-config` around each stage (README,
  # step 7); Terraform sets the bounds and the initial size, and an apply never resizes a pool
  # under a running job.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.name}-gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  # EKS-optimised AL2023 with the NVIDIA driver and container toolkit; the device plugin that
  # advertises nvidia.com/gpu is installed with Helm (see infra/README.md).
  ami_type       = "AL2023_x86_64_NVIDIA"
  instance_types = var.gpu_node_group.instance_types
  capacity_type  = var.gpu_node_group.capacity_type
  disk_size      = var.gpu_node_group.disk_size_gb # the CUDA image is ~15 GB; Ray spills objects to disk

  scaling_config {
    min_size     = var.gpu_node_group.min_size
    desired_size = var.gpu_node_group.desired_size
    max_size     = var.gpu_node_group.max_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = { (local.pool_label_key) = "gpu" }

  # Only pods that tolerate the taint (the Ray GPU workers) land on the expensive nodes.
  taint {
    key    = local.gpu_taint.key
    value  = local.gpu_taint.value
    effect = local.gpu_taint.effect
  }


  # Node counts are operated with `aws eks update-nodegroup-config` around each stage (README,
  # step 7); Terraform sets the bounds and the initial size, and an apply never resizes a pool
  # under a running job.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}
