# The three images' repositories: immutable tags (a tag is a release), scanned on push, with
# a lifecycle that keeps the last releases and drops untagged layers.

locals {
  images = toset(["api", "embedder", "trainer"])
}

resource "aws_ecr_repository" "image" {
  for_each             = local.images
  name                 = "${local.name}/dc-${each.key}"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.main.arn
  }
}

resource "aws_ecr_lifecycle_policy" "image" {
  for_each   = local.images
  repository = aws_ecr_repository.image[each.key].name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Untagged layers expire after a day"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 1 }
        action       = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the last ${var.ecr_keep_images} tagged images"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = var.ecr_keep_images }
        action       = { type = "expire" }
      },
    ]
  })
}

locals {
  image_uri = { for k in local.images : k => "${aws_ecr_repository.image[k].repository_url}:${var.image_tag}" }
}
