# Example settings: copy to terraform.tfvars (git-ignored by convention), edit, then
#   terraform apply -var-file=terraform.tfvars
# Sizes only; hyperparameters live in configs/.

name   = "vllama"
region = "us-east-1"

# Who may reach the Kubernetes API from outside the VPC: your office/VPN egress, e.g. the output
# of `curl -s https://checkip.amazonaws.com` followed by /32.
cluster_endpoint_public_access_cidrs = ["203.0.113.10/32"]
cluster_admin_principal_arns         = [] # e.g. ["arn:aws:iam::123456789012:role/ml-platform-admin"]

# The image the manifests run: build and push it with this tag (README, step 4).
image_tag = "0.1.0-abc1234"

# Ingestion and the Ray heads. Downloads and ffmpeg are CPU-bound: compute-optimised nodes.
cpu_node_group = {
  instance_types = ["c6i.8xlarge"]
  capacity_type  = "ON_DEMAND"
  min_size       = 1
  desired_size   = 1 # initial size; scaled per stage with the AWS CLI (README, step 7)
  max_size       = 16
  disk_size_gb   = 200
}

# Feature extraction and training: 8 GPUs per node. The reference recipe is one node of
# 8x A100-80G (p4de.24xlarge); p4d.24xlarge has 8x A100-40G, p5.48xlarge 8x H100-80G.
# Start at 0; scale up for a GPU stage and back to 0 afterwards (README, step 7).
gpu_node_group = {
  instance_types = ["p4d.24xlarge"]
  capacity_type  = "ON_DEMAND" # SPOT is cheaper; RayJobs retry (backoffLimit) and stages resume
  min_size       = 0
  desired_size   = 0
  max_size       = 8
  disk_size_gb   = 500
}

sse_algorithm = "aws:kms" # or "AES256"

mlflow_db = {
  instance_class        = "db.t4g.medium"
  engine_version        = "16"
  allocated_storage_gb  = 20
  max_allocated_storage = 100
  multi_az              = false
  backup_retention_days = 7
  deletion_protection   = true
}

tags = {
  Team = "ml-platform"
}
