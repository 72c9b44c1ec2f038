# One-off and periodic work on the trainer image, started with `aws ecs run-task` (README):
#   migrate  alembic upgrade head (before the first API deployment of a new schema)
#   train    scripts/train.py (retrain, back up to S3, promote what passes the gates), also
#            on an EventBridge schedule, disabled by default
#   report   scripts/report.py (every model's production report of the last day, written to
#            the artifact store and backed up to S3), on a daily schedule, enabled by default
# Both run on the cluster's capacity (retraining on EC2, as production learned).

locals {
  jobs = {
    migrate = ["migrate"]
    train   = concat(["train"], var.train_command)
    report  = concat(["python", "scripts/report.py"], var.report_command)
  }

  # The periodic jobs: which job, when, and whether the schedule runs.
  schedules = {
    train = {
      description = "Retrain every configured model and promote the ones that pass the gates"
      expression  = var.retrain_schedule
      enabled     = var.retrain_schedule_enabled
    }
    report = {
      description = "Write every model's production report of the last day and back it up to S3"
      expression  = var.report_schedule
      enabled     = var.report_schedule_enabled
    }
  }

  job_container = {
    for job, command in local.jobs : job => merge(local.container_base, {
      name        = job
      image       = local.image_uri["trainer"]
      command     = command
      cpu         = var.trainer_cpu
      memory      = var.trainer_memory
      environment = [for k in sort(keys(local.trainer_settings)) : { name = k, value = local.trainer_settings[k] }]
      secrets     = [for k in sort(keys(local.database_secrets)) : { name = k, valueFrom = local.database_secrets[k] }]
      mountPoints = concat(local.scratch_mounts, [
        { sourceVolume = "artifacts", containerPath = local.artifact_path, readOnly = false },
        # TensorFlow, Keras and matplotlib keep their caches under the user's home.
        { sourceVolume = "home", containerPath = "/home/dc", readOnly = false },
      ])
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service["jobs"].name
          awslogs-region        = var.aws_region
          awslogs-stream-prefix = job
        }
      }
    })
  }
}

resource "aws_ecs_task_definition" "job" {
  for_each                 = local.jobs
  family                   = "${local.name}-${each.key}"
  requires_compatibilities = [var.launch_type]
  network_mode             = "awsvpc"
  cpu                      = local.fargate ? var.trainer_cpu : null
  memory                   = local.fargate ? var.trainer_memory : null
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task["jobs"].arn
  container_definitions    = jsonencode([local.job_container[each.key]])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  dynamic "volume" {
    for_each = toset(["tmp", "run", "artifacts", "home"])
    content {
      name = volume.value
    }
  }
}

# --- periodic retraining and reports ---------------------------------------------------------

moved {
  from = aws_scheduler_schedule.retrain
  to   = aws_scheduler_schedule.job["train"]
}

resource "aws_scheduler_schedule" "job" {
  for_each                     = local.schedules
  name                         = "${local.name}-${each.key == "train" ? "retrain" : each.key}"
  description                  = each.value.description
  schedule_expression          = each.value.expression
  schedule_expression_timezone = "UTC"
  state                        = each.value.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = aws_kms_key.main.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.main.arn
    role_arn = aws_iam_role.scheduler.arn

    ecs_parameters {
      task_definition_arn     = aws_ecs_task_definition.job[each.key].arn_without_revision
      task_count              = 1
      enable_ecs_managed_tags = true
      propagate_tags          = "TASK_DEFINITION"

      capacity_provider_strategy {
        capacity_provider = local.ec2 ? aws_ecs_capacity_provider.ec2[0].name : "FARGATE"
        weight            = 1
      }

      network_configuration {
        subnets          = local.private_subnet_ids
        security_groups  = [aws_security_group.jobs.id]
        assign_public_ip = false
      }
    }

    retry_policy {
      maximum_retry_attempts       = 2
      maximum_event_age_in_seconds = 3600
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${local.name}-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "RunTheScheduledTasks"
    actions   = ["ecs:RunTask"]
    resources = [for job in keys(local.schedules) : "${aws_ecs_task_definition.job[job].arn_without_revision}:*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.main.arn]
    }
  }
  statement {
    sid       = "PassItsRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.task["jobs"].arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
  statement {
    sid       = "TagTheTask"
    actions   = ["ecs:TagResource"]
    resources = ["arn:${local.partition}:ecs:${var.aws_region}:${local.account_id}:task/${aws_ecs_cluster.main.name}/*"]
  }
  statement {
    sid       = "TheScheduleKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "run-scheduled-jobs"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}
