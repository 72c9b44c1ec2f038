# Terraform and provider versions, the remote state, and the one AWS provider.
#
# `terraform test` needs 1.7 (mock providers); write-only arguments need 1.11. Plain `aws_*`
# resources only: no registry modules, so `terraform init` needs nothing but the AWS provider.

terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # State must not live on a laptop: keep it in S3 with a DynamoDB lock table, one key per
  # environment. The bucket and table are created once per account, outside this stack
  # (README, "Remote state"). Uncomment, then `terraform init -backend-config=environments/<env>.s3.tfbackend`.
  #
  # backend "s3" {
  #   # bucket         = "<account>-terraform-state"    (from the -backend-config file)
  #   # key            = "dc/<env>/terraform.tfstate"
  #   # region         = "eu-west-1"
  #   # dynamodb_table = "terraform-locks"
  #   encrypt = true
  # }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge(var.tags, {
      Project     = var.project
      Environment = var.environment
      ManagedBy   = "terraform"
    })
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}
