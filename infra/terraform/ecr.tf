# The project image (infra/docker/Dockerfile): Ray heads and workers, job submitters and the
# MLflow server all run it, so clients and server agree on versions.

resource "aws_ecr_repository" "project" {
  name = var.name
  # A tag always names the same image, so a manifest reproduces the run it started.
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256" # code and libraries only, no data: S3-managed keys are enough
  }
}

resource "aws_ecr_lifecycle_policy" "project" {
  repository = aws_ecr_repository.project.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Drop untagged layers (failed or superseded pushes) after a week"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 7 }
        action       = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the 50 most recent images"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 50 }
        action       = { type = "expire" }
      },
    ]
  })
}
