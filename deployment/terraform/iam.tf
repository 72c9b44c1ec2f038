# Roles, least privilege. The execution role (ECS itself: pull images, write logs, read the
# secrets it injects) is separate from each workload's task role (what the code may do):
#   api       read the artifact backups under its prefix, mount the spool on EFS
#   embedder  nothing
#   jobs      read and write the artifact backups under its prefix

locals {
  task_roles = toset(["api", "embedder", "jobs"])
  prefix_arn = "${aws_s3_bucket.artifacts.arn}/${var.s3_prefix}/*"
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${local.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "PullImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [for repository in aws_ecr_repository.image : repository.arn]
  }
  statement {
    sid       = "ECRLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # the action has no resource-level permissions
  }
  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for group in aws_cloudwatch_log_group.service : "${group.arn}:*"]
  }
  statement {
    sid       = "InjectSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.secret_arns
  }
  statement {
    sid       = "DecryptWithTheStackKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-log-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  for_each           = local.task_roles
  name               = "${local.name}-${each.key}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "artifacts" {
  for_each = { api = false, jobs = true }

  statement {
    sid       = "ListThePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.s3_prefix, "${var.s3_prefix}/*"]
    }
  }
  statement {
    sid       = each.value ? "ReadWriteThePrefix" : "ReadThePrefix"
    actions   = each.value ? ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"] : ["s3:GetObject"]
    resources = [local.prefix_arn]
  }
  statement {
    sid       = "TheBucketKey"
    actions   = each.value ? ["kms:Decrypt", "kms:GenerateDataKey"] : ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.aws_region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "artifacts" {
  for_each = data.aws_iam_policy_document.artifacts
  name     = "artifacts-${var.s3_prefix}"
  role     = aws_iam_role.task[each.key].id
  policy   = each.value.json
}

data "aws_iam_policy_document" "api_spool" {
  statement {
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.spool.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.spool.arn]
    }
  }
}

resource "aws_iam_role_policy" "api_spool" {
  name   = "spool-on-efs"
  role   = aws_iam_role.task["api"].id
  policy = data.aws_iam_policy_document.api_spool.json
}

# --- the container instances (EC2) -----------------------------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  count              = local.ec2 ? 1 : 0
  name               = "${local.name}-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

# The ECS agent's policy, and Session Manager instead of SSH (no key pair, no port 22).
resource "aws_iam_role_policy_attachment" "instance" {
  for_each = local.ec2 ? toset([
    "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role",
    "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
  ]) : toset([])
  role       = aws_iam_role.instance[0].name
  policy_arn = each.value
}

resource "aws_iam_instance_profile" "instance" {
  count = local.ec2 ? 1 : 0
  name  = "${local.name}-instance"
  role  = aws_iam_role.instance[0].name
}
