# Every value the Kubernetes manifests need. infra/k8s/render.py substitutes `${name}` in the
# templates with the output of the same name; tests/infra checks that each placeholder has one.

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.this.name}"
}

output "cpu_node_group_name" {
  description = "CPU node group (for `aws eks update-nodegroup-config`)."
  value       = aws_eks_node_group.cpu.node_group_name
}

output "gpu_node_group_name" {
  description = "GPU node group (for `aws eks update-nodegroup-config`)."
  value       = aws_eks_node_group.gpu.node_group_name
}

output "k8s_namespace" {
  description = "Namespace of the Ray pods and MLflow."
  value       = var.k8s_namespace
}

output "ecr_repository_url" {
  description = "Where to push the project image."
  value       = aws_ecr_repository.project.repository_url
}

output "image" {
  description = "The project image the manifests run: repository URL and var.image_tag."
  value       = "${aws_ecr_repository.project.repository_url}:${var.image_tag}"
}

output "media_bucket" {
  description = "Bucket for webdataset media shards (and the raw source lists under sources/)."
  value       = aws_s3_bucket.this["media"].bucket
}

output "features_bucket" {
  description = "Bucket for the fingerprinted feature store."
  value       = aws_s3_bucket.this["features"].bucket
}

output "checkpoints_bucket" {
  description = "Bucket for pretrained weights (pretrained/) and training checkpoints (runs/)."
  value       = aws_s3_bucket.this["checkpoints"].bucket
}

output "mlflow_bucket" {
  description = "Bucket for MLflow artifacts (written by the MLflow server only)."
  value       = aws_s3_bucket.this["mlflow"].bucket
}

output "ingest_role_arn" {
  description = "IRSA role of the ingestion service account."
  value       = aws_iam_role.irsa["ingest"].arn
}

output "extract_role_arn" {
  description = "IRSA role of the feature-extraction service account."
  value       = aws_iam_role.irsa["extract"].arn
}

output "train_role_arn" {
  description = "IRSA role of the training service account."
  value       = aws_iam_role.irsa["train"].arn
}

output "chain_role_arn" {
  description = "IRSA role of the service account that runs the whole chain (and the long-lived RayCluster)."
  value       = aws_iam_role.irsa["chain"].arn
}

output "mlflow_role_arn" {
  description = "IRSA role of the MLflow server."
  value       = aws_iam_role.irsa["mlflow"].arn
}

output "ingest_service_account" {
  description = "Service account the ingestion RayJobs run as."
  value       = local.irsa_roles.ingest.service_account
}

output "extract_service_account" {
  description = "Service account the feature-extraction RayJob runs as."
  value       = local.irsa_roles.extract.service_account
}

output "train_service_account" {
  description = "Service account the training RayJobs run as."
  value       = local.irsa_roles.train.service_account
}

output "chain_service_account" {
  description = "Service account of the chain RayJob and the long-lived RayCluster."
  value       = local.irsa_roles.chain.service_account
}

output "mlflow_service_account" {
  description = "Service account of the MLflow server."
  value       = local.irsa_roles.mlflow.service_account
}

output "mlflow_db_host" {
  description = "MLflow PostgreSQL hostname (private)."
  value       = aws_db_instance.mlflow.address
}

output "mlflow_db_port" {
  description = "MLflow PostgreSQL port."
  value       = tostring(aws_db_instance.mlflow.port)
}

output "mlflow_db_name" {
  description = "MLflow PostgreSQL database."
  value       = aws_db_instance.mlflow.db_name
}

output "mlflow_db_username" {
  description = "MLflow PostgreSQL user."
  value       = aws_db_instance.mlflow.username
}

output "mlflow_db_secret_arn" {
  description = "Secrets Manager secret holding the MLflow database username and password (JSON)."
  value       = aws_secretsmanager_secret.mlflow_db.arn
}

output "kms_key_arn" {
  description = "Customer-managed key encrypting the data (null when sse_algorithm is AES256)."
  value       = local.data_key_arn
}
