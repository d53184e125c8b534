# Infrastructure only: sizes, placement and security switches. Training hyperparameters live in
# configs/, never here.

variable "name" {
  description = "Prefix for every resource name (cluster, buckets, roles)."
  type        = string
  default     = "vllama"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters of lowercase letters, digits and '-', starting with a letter (it is part of S3 bucket names)."
  }
}

variable "region" {
  description = "AWS region. p4d/p5 capacity differs by region; check before choosing."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags on every resource (cost allocation, owner)."
  type        = map(string)
  default     = {}
}

# --- network -------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "VPC address range. Private subnets get an eighth of it each: the VPC CNI gives every pod a VPC address."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be a valid IPv4 CIDR of size /16 or larger."
  }
}

variable "az_count" {
  description = "Availability zones to spread subnets over (EKS needs at least 2)."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "az_count must be between 2 and 4."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = true
}

# --- EKS -----------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the public Kubernetes API endpoint (your office or VPN). Nodes use the private endpoint."
  type        = list(string)

  validation {
    condition     = length(var.cluster_endpoint_public_access_cidrs) > 0 && alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "cluster_endpoint_public_access_cidrs must list at least one valid CIDR, e.g. [\"203.0.113.10/32\"]."
  }
}

variable "cluster_admin_principal_arns" {
  description = "IAM users/roles given cluster-admin through EKS access entries (besides the identity that runs terraform)."
  type        = list(string)
  default     = []
}

variable "cluster_log_types" {
  description = "Control-plane logs sent to CloudWatch."
  type        = list(string)
  default     = ["audit", "authenticator"] # who did what; "api" adds volume (and CloudWatch cost)
}

variable "cpu_node_group" {
  description = "CPU nodes: Ray heads, ingestion workers (ffmpeg, downloads), MLflow, the KubeRay operator. One node holds the always-on pods; desired_size is the initial size only: scale with `aws eks update-nodegroup-config` to 1 + the CPU workers a RayJob asks for."
  type = object({
    instance_types = list(string)
    capacity_type  = string # ON_DEMAND or SPOT
    min_size       = number
    desired_size   = number
    max_size       = number
    disk_size_gb   = number
  })
  default = {
    instance_types = ["c6i.8xlarge"]
    capacity_type  = "ON_DEMAND"
    min_size       = 1
    desired_size   = 1
    max_size       = 16
    disk_size_gb   = 200
  }

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.cpu_node_group.capacity_type)
    error_message = "cpu_node_group.capacity_type must be ON_DEMAND or SPOT."
  }
  validation {
    condition     = var.cpu_node_group.min_size <= var.cpu_node_group.desired_size && var.cpu_node_group.desired_size <= var.cpu_node_group.max_size && var.cpu_node_group.max_size >= 1
    error_message = "cpu_node_group needs min_size <= desired_size <= max_size and max_size >= 1."
  }
}

variable "gpu_node_group" {
  description = "GPU nodes for feature extraction and training (8 GPUs each on p4d/p4de/p5). desired_size is the initial size only: scale with `aws eks update-nodegroup-config` around each GPU stage and back to 0 after."
  type = object({
    instance_types = list(string)
    capacity_type  = string # ON_DEMAND or SPOT
    min_size       = number
    desired_size   = number
    max_size       = number
    disk_size_gb   = number
  })
  default = {
    instance_types = ["p4d.24xlarge"]
    capacity_type  = "ON_DEMAND"
    min_size       = 0
    desired_size   = 0
    max_size       = 8
    disk_size_gb   = 500
  }

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_node_group.capacity_type)
    error_message = "gpu_node_group.capacity_type must be ON_DEMAND or SPOT."
  }
  validation {
    condition     = var.gpu_node_group.min_size <= var.gpu_node_group.desired_size && var.gpu_node_group.desired_size <= var.gpu_node_group.max_size && var.gpu_node_group.max_size >= 1
    error_message = "gpu_node_group needs min_size <= desired_size <= max_size and max_size >= 1."
  }
  validation {
    condition     = alltrue([for t in var.gpu_node_group.instance_types : can(regex("^(p4d|p4de|p5|p5e|p5en|g5|g6e)\\.", t))])
    error_message = "gpu_node_group.instance_types must be NVIDIA GPU instances (p4d, p4de, p5, p5e, p5en; g5/g6e for small tests)."
  }
}

variable "k8s_namespace" {
  description = "Namespace of the Ray pods and MLflow; the IRSA trust policies are scoped to service accounts in it."
  type        = string
  default     = "vllama"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_namespace))
    error_message = "k8s_namespace must be a valid Kubernetes namespace name."
  }
}

# --- storage -------------------------------------------------------------------------------

variable "sse_algorithm" {
  description = "Encryption at rest: aws:kms (a customer-managed key this stack creates, rotated yearly; auditable in CloudTrail) or AES256 (S3-managed keys, no KMS request charges)."
  type        = string
  default     = "aws:kms"

  validation {
    condition     = contains(["aws:kms", "AES256"], var.sse_algorithm)
    error_message = "sse_algorithm must be \"aws:kms\" or \"AES256\"."
  }
}

variable "tmp_expiration_days" {
  description = "Objects under tmp/ in any bucket (scratch output, partial runs) are deleted after this many days."
  type        = number
  default     = 7
}

variable "abort_incomplete_multipart_days" {
  description = "Unfinished multipart uploads (a killed writer) are aborted after this many days; until then they are billed."
  type        = number
  default     = 3
}

variable "noncurrent_version_expiration_days" {
  description = "Overwritten or deleted versions in versioned buckets (features, checkpoints, MLflow) are kept this long."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Teardown switch: lets `terraform destroy` delete non-empty buckets (all versions), the ECR repository with its images, the password secret without recovery window, and lifts the database's deletion protection (a final snapshot is still taken). Set true only to tear down."
  type        = bool
  default     = false
}

# --- image ---------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the project image in ECR that the manifests run, e.g. the git commit. Tags are immutable, so a new build needs a new tag (only the `image` output changes)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a valid Docker tag."
  }
}

# --- MLflow database -----------------------------------------------------------------------

variable "mlflow_db" {
  description = "PostgreSQL for the MLflow tracking backend. It stores run metadata only (artifacts go to S3), so a small instance is enough."
  type = object({
    instance_class        = string
    engine_version        = string
    allocated_storage_gb  = number
    max_allocated_storage = number
    multi_az              = bool
    backup_retention_days = number
    deletion_protection   = bool
  })
  default = {
    instance_class        = "db.t4g.medium"
    engine_version        = "16"
    allocated_storage_gb  = 20
    max_allocated_storage = 100
    multi_az              = false
    backup_retention_days = 7
    deletion_protection   = true
  }

  validation {
    condition     = var.mlflow_db.backup_retention_days >= 1
    error_message = "mlflow_db.backup_retention_days must be at least 1: experiment history is not reproducible."
  }
}

variable "mlflow_db_password_version" {
  description = "Bump to generate a new MLflow database password (written to Secrets Manager and RDS together), then recreate the mlflow-db Kubernetes secret."
  type        = number
  default     = 1
}
