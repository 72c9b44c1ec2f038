# The ECS cluster and its capacity: an Auto Scaling group of T3 instances from the
# ECS-optimised Amazon Linux 2023 AMI, behind a capacity provider with managed scaling and
# termination protection (launch_type = "EC2"), or Fargate (launch_type = "FARGATE").

resource "aws_ecs_cluster" "main" {
  name = local.name

  setting {
    name  = "containerInsights"
    value = var.container_insights
  }

  service_connect_defaults {
    namespace = aws_service_discovery_http_namespace.main.arn
  }
}

# Service Connect's namespace: the API reaches the embedder as http://embedder:8501.
resource "aws_service_discovery_http_namespace" "main" {
  name        = local.name
  description = "Service Connect names of ${local.name}"
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = local.ec2 ? [aws_ecs_capacity_provider.ec2[0].name] : ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = local.ec2 ? aws_ecs_capacity_provider.ec2[0].name : "FARGATE"
    weight            = 1
    base              = 0
  }
}

data "aws_ssm_parameter" "ecs_ami" {
  count = local.ec2 ? 1 : 0
  name  = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
}

resource "aws_launch_template" "ecs" {
  count                  = local.ec2 ? 1 : 0
  name_prefix            = "${local.name}-ecs-"
  image_id               = data.aws_ssm_parameter.ecs_ami[0].insecure_value
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.instances[0].id]
  update_default_version = true
  ebs_optimized          = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance[0].arn
  }

  credit_specification {
    cpu_credits = var.cpu_credits
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.instance_root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.main.arn
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1 # tasks (awsvpc) cannot reach the instance's credentials
  }

  monitoring {
    enabled = true
  }

  # Join the cluster; tasks may not use the instance role; images stay cached for restarts.
  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CONFIG'
    ECS_CLUSTER=${local.name}
    ECS_ENABLE_TASK_IAM_ROLE=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_CONTAINER_STOP_TIMEOUT=${var.stop_timeout_s}s
    ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
    ECS_ENABLE_CONTAINER_METADATA=true
    CONFIG
    EOT
  )

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${local.name}-ecs" }
  }
}

resource "aws_autoscaling_group" "ecs" {
  count               = local.ec2 ? 1 : 0
  name_prefix         = "${local.name}-ecs-"
  min_size            = var.asg_min_size
  max_size            = var.asg_max_size
  vpc_zone_identifier = local.private_subnet_ids
  health_check_type   = "EC2"
  # ECS protects instances that run tasks; managed termination protection needs it on.
  protect_from_scale_in = true

  launch_template {
    id      = aws_launch_template.ecs[0].id
    version = "$Latest"
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  # Managed scaling owns the desired capacity.
  lifecycle {
    ignore_changes = [desired_capacity]

    precondition {
      condition     = var.asg_min_size <= var.asg_max_size
      error_message = "asg_min_size must not exceed asg_max_size."
    }
  }
}

resource "aws_ecs_capacity_provider" "ec2" {
  count = local.ec2 ? 1 : 0
  name  = "${local.name}-ec2"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.ecs[0].arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = var.capacity_target_percent
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = 2
      instance_warmup_period    = 120
    }
  }
}
