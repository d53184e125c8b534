# Security properties of the stack, checked against a mocked AWS provider: `terraform test`
# plans and "applies" the real configuration with no AWS account (computed values are fakes).
# Run from infra/terraform: terraform init -backend=false && terraform test

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"] }
  }
  # ARN-shaped fakes where the provider validates the format (role_arn, kms_key_id).
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_eks_cluster" {
    defaults = {
      identity   = [{ oidc = [{ issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123" }] }]
      vpc_config = { cluster_security_group_id = "sg-0cluster" }
    }
  }
}

variables {
  cluster_endpoint_public_access_cidrs = ["203.0.113.10/32"]
  image_tag                            = "abc1234"
}

run "kms_default" {
  command = apply

  # --- S3 -------------------------------------------------------------------------------------
  assert {
    condition = toset([for b in aws_s3_bucket.this : b.bucket]) == toset([
      "vllama-123456789012-us-east-1-media",
      "vllama-123456789012-us-east-1-features",
      "vllama-123456789012-us-east-1-checkpoints",
      "vllama-123456789012-us-east-1-mlflow",
    ])
    error_message = "expected exactly the four project buckets"
  }
  assert {
    condition = keys(aws_s3_bucket_public_access_block.this) == keys(aws_s3_bucket.this) && alltrue([
      for p in aws_s3_bucket_public_access_block.this :
      p.block_public_acls && p.block_public_policy && p.ignore_public_acls && p.restrict_public_buckets
    ])
    error_message = "every bucket needs a public access block with all four flags true"
  }
  assert {
    condition = keys(aws_s3_bucket_ownership_controls.this) == keys(aws_s3_bucket.this) && alltrue([
      for o in aws_s3_bucket_ownership_controls.this : o.rule[0].object_ownership == "BucketOwnerEnforced"
    ])
    error_message = "every bucket must disable ACLs (BucketOwnerEnforced)"
  }
  assert {
    condition = keys(aws_s3_bucket_server_side_encryption_configuration.this) == keys(aws_s3_bucket.this) && alltrue([
      for e in aws_s3_bucket_server_side_encryption_configuration.this : alltrue([
        for r in e.rule :
        r.apply_server_side_encryption_by_default[0].sse_algorithm == "aws:kms" &&
        r.apply_server_side_encryption_by_default[0].kms_master_key_id == aws_kms_key.data[0].arn &&
        r.bucket_key_enabled
      ])
    ])
    error_message = "every bucket must default to SSE-KMS with the project key"
  }
  assert {
    condition     = aws_kms_key.data[0].enable_key_rotation
    error_message = "the data key must rotate"
  }
  assert {
    condition = toset(keys(aws_s3_bucket_versioning.this)) == toset(["features", "checkpoints", "mlflow"]) && alltrue([
      for v in aws_s3_bucket_versioning.this : v.versioning_configuration[0].status == "Enabled"
    ])
    error_message = "features, checkpoints and mlflow buckets must be versioned"
  }
  assert {
    condition = keys(aws_s3_bucket_lifecycle_configuration.this) == keys(aws_s3_bucket.this) && alltrue([
      for l in aws_s3_bucket_lifecycle_configuration.this :
      anytrue([for r in l.rule : try(r.filter[0].prefix, null) == "tmp/" && try(r.expiration[0].days, null) == 7 && r.status == "Enabled"]) &&
      anytrue([for r in l.rule : try(r.abort_incomplete_multipart_upload[0].days_after_initiation, null) == 3 && r.filter[0].prefix == "" && r.status == "Enabled"])
    ])
    error_message = "every bucket must expire tmp/ after 7 days and abort stale multipart uploads"
  }
  assert {
    condition = alltrue([
      for k in keys(aws_s3_bucket_versioning.this) : anytrue([
        for r in aws_s3_bucket_lifecycle_configuration.this[k].rule :
        try(r.noncurrent_version_expiration[0].noncurrent_days, null) == 30 && r.filter[0].prefix == "" && r.status == "Enabled"
      ])
    ])
    error_message = "versioned buckets must expire noncurrent versions bucket-wide"
  }
  assert {
    condition = keys(aws_s3_bucket_policy.tls_only) == keys(aws_s3_bucket.this) && alltrue([
      for k, p in aws_s3_bucket_policy.tls_only : anytrue([
        for s in jsondecode(p.policy).Statement :
        s.Effect == "Deny" && s.Principal == "*" && s.Action == "s3:*" &&
        try(s.Condition.Bool["aws:SecureTransport"], "") == "false" &&
        toset(s.Resource) == toset([aws_s3_bucket.this[k].arn, "${aws_s3_bucket.this[k].arn}/*"])
      ])
    ])
    error_message = "every bucket policy must deny requests without TLS on the bucket and its objects"
  }
  assert {
    condition = alltrue([
      for p in aws_s3_bucket_policy.tls_only : alltrue([for s in jsondecode(p.policy).Statement : s.Effect == "Deny"])
    ])
    error_message = "bucket policies must only deny (access is granted by the IRSA roles)"
  }

  # --- RDS ------------------------------------------------------------------------------------
  assert {
    condition     = aws_db_instance.mlflow.storage_encrypted && aws_db_instance.mlflow.kms_key_id == aws_kms_key.data[0].arn
    error_message = "the MLflow database must be encrypted with the project key"
  }
  assert {
    condition     = aws_db_instance.mlflow.publicly_accessible == false
    error_message = "the MLflow database must not be publicly accessible"
  }
  assert {
    condition     = toset(aws_db_subnet_group.mlflow.subnet_ids) == toset(aws_subnet.private[*].id)
    error_message = "the MLflow database must live in the private subnets"
  }
  assert {
    condition     = aws_db_instance.mlflow.password == null && aws_db_instance.mlflow.password_wo == null
    error_message = "the database password must not be stored in the instance's state (write-only attribute)"
  }
  assert {
    condition     = aws_secretsmanager_secret.mlflow_db.kms_key_id == aws_kms_key.data[0].arn
    error_message = "the password secret must be encrypted with the project key"
  }
  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.mlflow_db_from_eks.referenced_security_group_id == "sg-0cluster" &&
      aws_vpc_security_group_ingress_rule.mlflow_db_from_eks.cidr_ipv4 == null &&
      aws_vpc_security_group_ingress_rule.mlflow_db_from_eks.from_port == 5432 &&
      aws_vpc_security_group_ingress_rule.mlflow_db_from_eks.to_port == 5432
    )
    error_message = "the database must accept PostgreSQL from the EKS cluster security group only"
  }
  assert {
    condition     = aws_db_instance.mlflow.deletion_protection && !aws_db_instance.mlflow.skip_final_snapshot && aws_db_instance.mlflow.backup_retention_period >= 1
    error_message = "by default the MLflow database must be protected from deletion and backed up"
  }
  assert {
    condition     = alltrue([for b in aws_s3_bucket.this : !b.force_destroy]) && !aws_ecr_repository.project.force_delete
    error_message = "by default buckets and the image repository must refuse to be destroyed with content"
  }

  # --- IRSA -----------------------------------------------------------------------------------
  assert {
    condition = alltrue([
      for k, sa in {
        ingest = "ray-ingest", extract = "ray-extract", train = "ray-train", chain = "ray-chain", mlflow = "mlflow"
        } : (
        length(jsondecode(aws_iam_role.irsa[k].assume_role_policy).Statement) == 1 &&
        jsondecode(aws_iam_role.irsa[k].assume_role_policy).Statement[0].Principal.Federated == aws_iam_openid_connect_provider.eks.arn &&
        jsondecode(aws_iam_role.irsa[k].assume_role_policy).Statement[0].Action == "sts:AssumeRoleWithWebIdentity" &&
        jsondecode(aws_iam_role.irsa[k].assume_role_policy).Statement[0].Condition.StringEquals == {
          "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123:sub" = "system:serviceaccount:vllama:${sa}"
          "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123:aud" = "sts.amazonaws.com"
        }
      )
    ]) && length(aws_iam_role.irsa) == 5
    error_message = "each IRSA role must trust exactly one service account in the vllama namespace, for STS only"
  }
  assert {
    condition     = aws_iam_openid_connect_provider.eks.url == "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE0123" && aws_iam_openid_connect_provider.eks.client_id_list == toset(["sts.amazonaws.com"])
    error_message = "the OIDC provider must be the cluster's issuer with the STS audience"
  }
  # Every resource an S3 action applies to, per role: exactly the role's buckets, never "*".
  assert {
    condition = alltrue([
      for k, buckets in {
        ingest  = ["media"]
        extract = ["media", "checkpoints", "features"]
        train   = ["features", "checkpoints"]
        chain   = ["media", "features", "checkpoints"]
        mlflow  = ["mlflow"]
        } : toset(flatten([
          for s in jsondecode(aws_iam_role_policy.irsa[k].policy).Statement : s.Resource
          if anytrue([for a in s.Action : startswith(a, "s3:")])
          ])) == toset(flatten([
          for b in buckets : [aws_s3_bucket.this[b].arn, "${aws_s3_bucket.this[b].arn}/*"]
      ]))
    ])
    error_message = "each role's S3 actions must apply to exactly its buckets and their objects"
  }
  # Writes (and deletes) only where the stage produces output.
  assert {
    condition = alltrue([
      for k, buckets in {
        ingest  = ["media"]
        extract = ["features"]
        train   = ["checkpoints"]
        chain   = ["media", "features", "checkpoints"]
        mlflow  = ["mlflow"]
        } : toset(flatten([
          for s in jsondecode(aws_iam_role_policy.irsa[k].policy).Statement : s.Resource
          if contains(s.Action, "s3:PutObject") || contains(s.Action, "s3:DeleteObject")
      ])) == toset([for b in buckets : "${aws_s3_bucket.this[b].arn}/*"])
    ])
    error_message = "each role may write and delete only in the buckets its stage produces"
  }
  assert {
    condition = alltrue(flatten([
      for p in aws_iam_role_policy.irsa : [
        for s in jsondecode(p.policy).Statement :
        s.Effect == "Allow" && !contains(s.Resource, "*") && alltrue([for a in s.Action : !endswith(a, "*")])
      ]
    ]))
    error_message = "no IRSA policy may use a wildcard resource or action"
  }
  assert {
    condition = alltrue([
      for p in aws_iam_role_policy.irsa : anytrue([
        for s in jsondecode(p.policy).Statement : s.Resource == [aws_kms_key.data[0].arn] && contains(s.Action, "kms:Decrypt")
      ])
    ])
    error_message = "with SSE-KMS every role needs Decrypt on the project key (and only that key)"
  }

  # --- network and EKS -------------------------------------------------------------------------
  assert {
    condition     = length(aws_subnet.private) == 3 && alltrue([for s in aws_subnet.private : s.map_public_ip_on_launch == false])
    error_message = "three private subnets without public IPs expected"
  }
  assert {
    condition     = alltrue([for r in aws_route.private_egress : r.nat_gateway_id == aws_nat_gateway.this[0].id && r.gateway_id == null])
    error_message = "private subnets must reach the internet through the NAT gateway only"
  }
  assert {
    condition = (
      toset(aws_eks_node_group.cpu.subnet_ids) == toset(aws_subnet.private[*].id) &&
      toset(aws_eks_node_group.gpu.subnet_ids) == toset(aws_subnet.private[*].id) &&
      toset(aws_eks_cluster.this.vpc_config[0].subnet_ids) == toset(aws_subnet.private[*].id)
    )
    error_message = "the control plane ENIs and all nodes must be in private subnets"
  }
  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_private_access && aws_eks_cluster.this.vpc_config[0].public_access_cidrs == toset(["203.0.113.10/32"])
    error_message = "the public API endpoint must be limited to the given CIDRs"
  }
  assert {
    condition = (
      aws_eks_node_group.gpu.labels == tomap({ "vllama.io/pool" = "gpu" }) &&
      aws_eks_node_group.cpu.labels == tomap({ "vllama.io/pool" = "cpu" }) &&
      [for t in aws_eks_node_group.gpu.taint : [t.key, t.value, t.effect]] == [["nvidia.com/gpu", "true", "NO_SCHEDULE"]] &&
      aws_eks_node_group.gpu.ami_type == "AL2023_x86_64_NVIDIA"
    )
    error_message = "node pools must carry the labels and GPU taint the KubeRay manifests select"
  }
  assert {
    condition     = output.image == "${aws_ecr_repository.project.repository_url}:abc1234" && aws_ecr_repository.project.image_tag_mutability == "IMMUTABLE"
    error_message = "the image output must name the immutable tag given in image_tag"
  }
}

run "aes256_ha_nat_teardown" {
  command   = apply
  state_key = "aes256" # a fresh stack, not an update of the one above

  variables {
    sse_algorithm      = "AES256"
    single_nat_gateway = false
    az_count           = 2
    force_destroy      = true
  }

  assert {
    condition     = length(aws_kms_key.data) == 0 && output.kms_key_arn == null
    error_message = "AES256 must not create a KMS key"
  }
  assert {
    condition = alltrue([
      for e in aws_s3_bucket_server_side_encryption_configuration.this : alltrue([
        for r in e.rule : r.apply_server_side_encryption_by_default[0].sse_algorithm == "AES256" && !r.bucket_key_enabled
      ])
    ]) && length(aws_s3_bucket_server_side_encryption_configuration.this) == 4
    error_message = "every bucket must default to AES256"
  }
  assert {
    condition     = aws_db_instance.mlflow.storage_encrypted
    error_message = "the database stays encrypted (with the AWS-managed key) under AES256"
  }
  assert {
    condition     = !aws_db_instance.mlflow.deletion_protection && !aws_db_instance.mlflow.skip_final_snapshot && alltrue([for b in aws_s3_bucket.this : b.force_destroy])
    error_message = "force_destroy lifts deletion protection and empties buckets, but still keeps a final snapshot"
  }
  assert {
    condition = alltrue(flatten([
      for p in aws_iam_role_policy.irsa : [for s in jsondecode(p.policy).Statement : alltrue([for a in s.Action : startswith(a, "s3:")])]
    ]))
    error_message = "without KMS the roles get S3 permissions only"
  }
  assert {
    condition     = length(aws_nat_gateway.this) == 2 && [for r in aws_route.private_egress : r.nat_gateway_id] == aws_nat_gateway.this[*].id
    error_message = "one NAT gateway per zone, each private subnet using its own"
  }
}

run "rejects_unsafe_inputs" {
  command = plan

  variables {
    sse_algorithm                        = "none"
    cluster_endpoint_public_access_cidrs = []
    gpu_node_group = {
      instance_types = ["m5.large"]
      capacity_type  = "SPOT"
      min_size       = 0
      desired_size   = 0
      max_size       = 1
      disk_size_gb   = 100
    }
  }

  expect_failures = [
    var.sse_algorithm,
    var.cluster_endpoint_public_access_cidrs,
    var.gpu_node_group,
  ]
}
