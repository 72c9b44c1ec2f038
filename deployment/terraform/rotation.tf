# RDS rotates the master password it keeps in Secrets Manager (every 7 days by default). ECS
# injects secrets when a task starts, so a running API task keeps its pooled connections but
# could open no new one after a rotation. When a rotation succeeds, EventBridge starts a Step
# Functions state machine that forces a new deployment of the API (a rolling one, with the
# circuit breaker): the new tasks start with the new password, and the inference log's rows
# of the minutes between wait in the spool on EFS.
#
# The event is "AWS Service Event via CloudTrail" (RotationSucceeded): CloudTrail must record
# the account's management events (any trail, an organisation trail included).

resource "aws_cloudwatch_event_rule" "database_password_rotated" {
  name        = "${local.name}-database-password-rotated"
  description = "The database's master secret was rotated: redeploy the API"
  event_pattern = jsonencode({
    source        = ["aws.secretsmanager"]
    "detail-type" = ["AWS Service Event via CloudTrail"]
    detail = {
      eventSource = ["secretsmanager.amazonaws.com"]
      eventName   = ["RotationSucceeded"]
      additionalEventData = {
        SecretId = [aws_db_instance.main.master_user_secret[0].secret_arn]
      }
    }
  })
}

resource "aws_cloudwatch_event_target" "redeploy_api" {
  rule     = aws_cloudwatch_event_rule.database_password_rotated.name
  arn      = aws_sfn_state_machine.redeploy_api.arn
  role_arn = aws_iam_role.redeploy_events.arn
}

resource "aws_sfn_state_machine" "redeploy_api" {
  name     = "${local.name}-redeploy-api"
  role_arn = aws_iam_role.redeploy_sfn.arn
  definition = jsonencode({
    Comment = "Force a new deployment of the API service (new tasks read the rotated secret)"
    StartAt = "UpdateService"
    States = {
      UpdateService = {
        Type     = "Task"
        Resource = "arn:${local.partition}:states:::aws-sdk:ecs:updateService"
        Parameters = {
          Cluster            = aws_ecs_cluster.main.name
          Service            = aws_ecs_service.api.name
          ForceNewDeployment = true
        }
        Retry = [{ ErrorEquals = ["States.ALL"], IntervalSeconds = 30, MaxAttempts = 3, BackoffRate = 2 }]
        End   = true
      }
    }
  })

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.redeploy.arn}:*"
    include_execution_data = true
    level                  = "ALL"
  }

  tracing_configuration {
    enabled = true
  }

  encryption_configuration {
    type                              = "CUSTOMER_MANAGED_KMS_KEY"
    kms_key_id                        = aws_kms_key.main.arn
    kms_data_key_reuse_period_seconds = 300
  }
}

resource "aws_cloudwatch_log_group" "redeploy" {
  name              = "/${var.project}/${var.environment}/redeploy-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_iam_role" "redeploy_events" {
  name               = "${local.name}-redeploy-events"
  assume_role_policy = data.aws_iam_policy_document.redeploy_assume["events"].json
}

resource "aws_iam_role" "redeploy_sfn" {
  name               = "${local.name}-redeploy-sfn"
  assume_role_policy = data.aws_iam_policy_document.redeploy_assume["states"].json
}

data "aws_iam_policy_document" "redeploy_assume" {
  for_each = toset(["events", "states"])
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["${each.key}.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

data "aws_iam_policy_document" "redeploy_events" {
  statement {
    actions   = ["states:StartExecution"]
    resources = [aws_sfn_state_machine.redeploy_api.arn]
  }
}

resource "aws_iam_role_policy" "redeploy_events" {
  name   = "start-redeploy"
  role   = aws_iam_role.redeploy_events.id
  policy = data.aws_iam_policy_document.redeploy_events.json
}

data "aws_iam_policy_document" "redeploy_sfn" {
  statement {
    sid       = "RedeployTheAPI"
    actions   = ["ecs:UpdateService"]
    resources = [aws_ecs_service.api.id]
  }
  statement {
    sid = "DeliverItsLogs"
    actions = [
      "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
      "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
    ]
    resources = ["*"] # log delivery actions have no resource-level permissions
  }
  statement {
    sid       = "Trace"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"]
    resources = ["*"] # X-Ray's write actions have no resource-level permissions
  }
  statement {
    sid       = "TheStateKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "redeploy_sfn" {
  name   = "redeploy-api"
  role   = aws_iam_role.redeploy_sfn.id
  policy = data.aws_iam_policy_document.redeploy_sfn.json
}
