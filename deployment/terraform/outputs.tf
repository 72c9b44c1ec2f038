# What deploying and operating need; no secret values (the secrets' ARNs only).

output "api_url" {
  description = "The load balancer's HTTPS address (point the certificate's DNS name at api_dns_name)."
  value       = "https://${aws_lb.api.dns_name}"
}

output "api_dns_name" {
  description = "DNS name of the load balancer, for the API's CNAME or alias record."
  value       = aws_lb.api.dns_name
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.main.name
}

output "ecr_repositories" {
  description = "Repository URL of each image (push <url>:<image_tag> before applying that tag)."
  value       = { for k, repository in aws_ecr_repository.image : k => repository.repository_url }
}

output "artifacts_bucket" {
  description = "DC_S3_BUCKET of the tasks."
  value       = aws_s3_bucket.artifacts.id
}

output "database_endpoint" {
  description = "Host:port of PostgreSQL (private subnets only)."
  value       = aws_db_instance.main.endpoint
}

output "database_secret_arn" {
  description = "ARN of the secret RDS keeps the master credentials in (the ARN, not the value)."
  value       = aws_db_instance.main.master_user_secret[0].secret_arn
}

output "job_task_definitions" {
  description = "Task definition families of the jobs, for aws ecs run-task --task-definition."
  value       = { for job, definition in aws_ecs_task_definition.job : job => definition.family }
}

output "run_task_network_configuration" {
  description = "The --network-configuration argument of aws ecs run-task for the jobs."
  value = jsonencode({
    awsvpcConfiguration = {
      subnets        = local.private_subnet_ids
      securityGroups = [aws_security_group.jobs.id]
      assignPublicIp = "DISABLED"
    }
  })
}

output "capacity_provider" {
  description = "Capacity provider of run-task (--capacity-provider-strategy capacityProvider=<this>)."
  value       = local.ec2 ? aws_ecs_capacity_provider.ec2[0].name : "FARGATE"
}

# The batch outputs (batch_application_id, batch_execution_role_arn, batch_s3,
# batch_spark_submit_parameters, batch_start_job_run) are in emr.tf, so that the file can be
# left out whole where the application cannot be made (scripts/terraform_moto.py).
