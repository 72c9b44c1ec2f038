# Target tracking: the API on CPU and on requests per task, the embedder on CPU. Scale-out is
# quick (60 s), scale-in slow (300 s), so a burst does not make the counts saw.

locals {
  scaled_services = {
    api      = { service = aws_ecs_service.api.name, min = var.api_min_tasks, max = var.api_max_tasks }
    embedder = { service = aws_ecs_service.embedder.name, min = var.embedder_min_tasks, max = var.embedder_max_tasks }
  }
}

resource "aws_appautoscaling_target" "service" {
  for_each           = local.scaled_services
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${each.value.service}"
  min_capacity       = each.value.min
  max_capacity       = each.value.max

  lifecycle {
    precondition {
      condition     = each.value.min >= 1 && each.value.min <= each.value.max
      error_message = "${each.key}: need 1 <= min tasks <= max tasks."
    }
  }
}

resource "aws_appautoscaling_policy" "cpu" {
  for_each           = { api = var.api_cpu_target, embedder = var.embedder_cpu_target }
  name               = "${local.name}-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service[each.key].service_namespace
  scalable_dimension = aws_appautoscaling_target.service[each.key].scalable_dimension
  resource_id        = aws_appautoscaling_target.service[each.key].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = each.value
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "api_requests" {
  name               = "${local.name}-api-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service["api"].service_namespace
  scalable_dimension = aws_appautoscaling_target.service["api"].scalable_dimension
  resource_id        = aws_appautoscaling_target.service["api"].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.api_requests_per_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.api.arn_suffix}/${aws_lb_target_group.api.arn_suffix}"
    }
  }
}
