# The two long-running services: the central embedder (internal, reached through Service
# Connect as http://embedder:8501) and the prediction API (behind the load balancer).

resource "aws_cloudwatch_log_group" "service" {
  for_each          = local.log_groups
  name              = "/${var.project}/${var.environment}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

locals {
  # What every container of this stack shares. The root filesystem is read-only: the images
  # write only to the volumes mounted below (/tmp, /app/var for control sockets and metric
  # files, and the spool or the artifacts where the role needs them).
  container_base = {
    essential              = true
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    stopTimeout            = var.stop_timeout_s
    # ECS's init process reaps zombies and forwards SIGTERM to the image's own entry point.
    linuxParameters = { initProcessEnabled = true }
    ulimits         = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
  }

  scratch_mounts = [
    { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    { sourceVolume = "run", containerPath = "/app/var", readOnly = false },
  ]

  # Fargate sizes the task; on EC2 the container reserves its CPU share and half its memory.
  fargate = var.launch_type == "FARGATE"

  api_container = merge(local.container_base, {
    name              = "api"
    image             = local.image_uri["api"]
    command           = ["api"]
    cpu               = var.api_cpu
    memory            = var.api_memory
    memoryReservation = local.fargate ? null : local.api_memory_reservation
    portMappings = [{
      name          = "api"
      containerPort = local.api_port
      protocol      = "tcp"
      appProtocol   = "http"
    }]
    environment = [for k in sort(keys(local.api_settings)) : { name = k, value = local.api_settings[k] }]
    secrets     = [for k in sort(keys(local.api_secrets)) : { name = k, valueFrom = local.api_secrets[k] }]
    mountPoints = concat(local.scratch_mounts, [
      { sourceVolume = "spool", containerPath = local.spool_path, readOnly = false },
      { sourceVolume = "artifacts", containerPath = local.artifact_path, readOnly = false },
    ])
    # Liveness only: /ready also needs the embedder and the database, and a task should not
    # be killed for their outage (the load balancer's check is /ready).
    healthCheck = {
      command     = ["CMD", "/opt/venv/bin/python", "/app/deployment/docker/healthcheck.py", "api", local.health_path]
      interval    = 10
      timeout     = 5
      retries     = 3
      startPeriod = 60
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service["api"].name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "api"
        mode                  = "non-blocking"
        max-buffer-size       = "25m"
      }
    }
  })

  embedder_container = merge(local.container_base, {
    name              = "embedder"
    image             = local.image_uri["embedder"]
    command           = ["embedder"]
    cpu               = var.embedder_cpu
    memory            = var.embedder_memory
    memoryReservation = local.fargate ? null : local.embedder_memory_reservation
    portMappings = [{
      name          = "embedder"
      containerPort = local.embedder_port
      protocol      = "tcp"
      appProtocol   = "http"
    }]
    environment = [for k in sort(keys(local.embedder_settings)) : { name = k, value = local.embedder_settings[k] }]
    secrets     = []
    mountPoints = local.scratch_mounts
    # /ready: the encoder is loaded and warmed. A rolling deployment moves on, and Service
    # Connect sends traffic, only once a new embedder can answer.
    healthCheck = {
      command     = ["CMD", "/opt/venv/bin/python", "/app/deployment/docker/healthcheck.py", "embedder", local.ready_path]
      interval    = 10
      timeout     = 5
      retries     = 3
      startPeriod = 180
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service["embedder"].name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "embedder"
        mode                  = "non-blocking"
        max-buffer-size       = "25m"
      }
    }
  })
}

resource "aws_ecs_task_definition" "api" {
  family                   = "${local.name}-api"
  requires_compatibilities = [var.launch_type]
  network_mode             = "awsvpc"
  cpu                      = local.fargate ? var.api_cpu : null
  memory                   = local.fargate ? var.api_memory : null
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task["api"].arn
  container_definitions    = jsonencode([local.api_container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }
  volume {
    name = "run"
  }
  volume {
    name = "artifacts"
  }
  volume {
    name = "spool"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.spool.id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.spool.id
        iam             = "ENABLED"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.stop_timeout_s >= var.api_graceful_timeout_s + 5
      error_message = "stop_timeout_s must exceed api_graceful_timeout_s by at least 5 s, or SIGKILL comes before the inference log is flushed."
    }
    precondition {
      condition     = length(local.overridden_settings) == 0
      error_message = "api_settings, embedder_settings and trainer_settings may not set the stack's wiring or its secrets: ${join(", ", sort(tolist(local.overridden_settings)))}."
    }
  }
}

resource "aws_ecs_task_definition" "embedder" {
  family                   = "${local.name}-embedder"
  requires_compatibilities = [var.launch_type]
  network_mode             = "awsvpc"
  cpu                      = local.fargate ? var.embedder_cpu : null
  memory                   = local.fargate ? var.embedder_memory : null
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task["embedder"].arn
  container_definitions    = jsonencode([local.embedder_container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }
  volume {
    name = "run"
  }
}

resource "aws_ecs_service" "embedder" {
  name                               = "embedder"
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.embedder.arn
  desired_count                      = var.embedder_min_tasks
  deployment_minimum_healthy_percent = var.deployment_min_healthy_percent
  deployment_maximum_percent         = var.deployment_max_percent
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"

  capacity_provider_strategy {
    capacity_provider = local.ec2 ? aws_ecs_capacity_provider.ec2[0].name : "FARGATE"
    weight            = 1
  }

  network_configuration {
    subnets          = local.private_subnet_ids
    security_groups  = [aws_security_group.embedder.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "ordered_placement_strategy" {
    for_each = local.ec2 ? [1] : []
    content {
      type  = "spread"
      field = "attribute:ecs.availability-zone"
    }
  }

  service_connect_configuration {
    enabled   = true
    namespace = aws_service_discovery_http_namespace.main.arn
    service {
      port_name      = "embedder"
      discovery_name = local.embedder_dns
      client_alias {
        port     = local.embedder_port
        dns_name = local.embedder_dns
      }
      timeout {
        # Longer than the API's DC_CLIENT_TIMEOUT_S (10 s): the client gives up first.
        per_request_timeout_seconds = 15
      }
    }
  }

  # Autoscaling owns the count once the service exists.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_ecs_cluster_capacity_providers.main]
}

resource "aws_ecs_service" "api" {
  name                               = "api"
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.api.arn
  desired_count                      = var.api_min_tasks
  deployment_minimum_healthy_percent = var.deployment_min_healthy_percent
  deployment_maximum_percent         = var.deployment_max_percent
  health_check_grace_period_seconds  = var.health_check_grace_period_s
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"

  capacity_provider_strategy {
    capacity_provider = local.ec2 ? aws_ecs_capacity_provider.ec2[0].name : "FARGATE"
    weight            = 1
  }

  network_configuration {
    subnets          = local.private_subnet_ids
    security_groups  = [aws_security_group.api.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.api.arn
    container_name   = "api"
    container_port   = local.api_port
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "ordered_placement_strategy" {
    for_each = local.ec2 ? [1] : []
    content {
      type  = "spread"
      field = "attribute:ecs.availability-zone"
    }
  }

  # A client of the embedder's Service Connect name only.
  service_connect_configuration {
    enabled   = true
    namespace = aws_service_discovery_http_namespace.main.arn
  }

  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [
    aws_lb_listener.https,
    aws_ecs_cluster_capacity_providers.main,
    aws_efs_mount_target.spool,
    aws_ecs_service.embedder,
  ]
}
