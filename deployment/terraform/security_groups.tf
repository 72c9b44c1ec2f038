# Who may talk to whom: the internet -> ALB (80, 443) -> API (8000) -> embedder (8501); the
# API, the jobs and the batch workers (batch_enabled) -> PostgreSQL (5432); the API -> EFS
# (2049). Egress of the tasks is HTTPS (AWS APIs, ECR, S3 through NAT or the gateway endpoint)
# plus the rules to their peers.

resource "aws_security_group" "alb" {
  name        = "${local.name}-alb"
  description = "The public load balancer of the prediction API"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-alb" }
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers a 301 to HTTPS (aws_lb_listener.http); no request is served over plain HTTP.
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from clients, answered with a redirect to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.api_port
  to_port                      = local.api_port
  referenced_security_group_id = aws_security_group.api.id
}

resource "aws_security_group" "api" {
  name        = "${local.name}-api"
  description = "Prediction API tasks"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-api" }
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "From the load balancer only"
  ip_protocol                  = "tcp"
  from_port                    = local.api_port
  to_port                      = local.api_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "embedder" {
  name        = "${local.name}-embedder"
  description = "Embedder tasks: reached by the API only"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-embedder" }
}

resource "aws_vpc_security_group_ingress_rule" "embedder_from_api" {
  security_group_id            = aws_security_group.embedder.id
  description                  = "From the API tasks only"
  ip_protocol                  = "tcp"
  from_port                    = local.embedder_port
  to_port                      = local.embedder_port
  referenced_security_group_id = aws_security_group.api.id
}

resource "aws_security_group" "jobs" {
  #checkov:skip=CKV2_AWS_5:Attached at run time: by the retraining schedule (jobs.tf) and by aws ecs run-task (the run_task_network_configuration output).
  name        = "${local.name}-jobs"
  description = "Migration and retraining tasks"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-jobs" }
}

resource "aws_security_group" "batch" {
  #checkov:skip=CKV2_AWS_5:Attached to the EMR Serverless application (emr.tf, network_configuration), whose job runs put it on their workers' interfaces.
  count       = var.batch_enabled ? 1 : 0
  name        = "${local.name}-batch"
  description = "EMR Serverless batch workers: PostgreSQL and HTTPS out, nothing in"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-batch" }
}

resource "aws_security_group" "database" {
  name        = "${local.name}-database"
  description = "PostgreSQL: reached by the API and the jobs only"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-database" }
}

resource "aws_security_group" "efs" {
  name        = "${local.name}-efs"
  description = "The API's spool on EFS: reached by the API tasks only"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-efs" }
}

resource "aws_security_group" "instances" {
  count       = local.ec2 ? 1 : 0
  name        = "${local.name}-instances"
  description = "ECS container instances: no inbound; the tasks have their own groups (awsvpc)"
  vpc_id      = local.vpc_id

  tags = { Name = "${local.name}-instances" }
}

locals {
  # Every workload's egress to AWS APIs, ECR, S3 and CloudWatch is HTTPS.
  https_egress_groups = merge(
    {
      api      = aws_security_group.api.id
      embedder = aws_security_group.embedder.id
      jobs     = aws_security_group.jobs.id
    },
    local.ec2 ? { instances = aws_security_group.instances[0].id } : {},
    var.batch_enabled ? { batch = aws_security_group.batch[0].id } : {},
  )
  # (from, to, port) of the peer rules: one egress on the caller, one ingress on the callee.
  peer_rules = merge(
    {
      api_to_embedder = { from = aws_security_group.api.id, to = aws_security_group.embedder.id, port = local.embedder_port }
      api_to_database = { from = aws_security_group.api.id, to = aws_security_group.database.id, port = 5432 }
      jobs_to_db      = { from = aws_security_group.jobs.id, to = aws_security_group.database.id, port = 5432 }
      api_to_efs      = { from = aws_security_group.api.id, to = aws_security_group.efs.id, port = 2049 }
    },
    var.batch_enabled ? { batch_to_db = { from = aws_security_group.batch[0].id, to = aws_security_group.database.id, port = 5432 } } : {},
  )
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = local.https_egress_groups
  security_group_id = each.value
  description       = "HTTPS to AWS APIs, ECR and S3"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "peer" {
  for_each                     = local.peer_rules
  security_group_id            = each.value.from
  description                  = "To ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = each.value.to
}

resource "aws_vpc_security_group_ingress_rule" "peer" {
  for_each                     = local.peer_rules
  security_group_id            = each.value.to
  description                  = "From ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = each.value.from
}
