# `terraform test` against a mock AWS provider: the stack is planned and "applied" with no
# account, and these assertions read the result. scripts/deploy_lint.py runs this file three
# times: with the defaults, and with environments/dev.tfvars and prod.tfvars (-var-file), so
# the assertions compare with var.* rather than with numbers.

mock_provider "aws" {
  # Policy documents are rendered by the provider itself; the mock gives every one a valid,
  # empty policy (what the roles and keys get is checkov's to read, from the source).
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
  # The provider checks that ARN arguments are ARNs: every referenced type gets a real-looking one.
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/mock" }
  }
  mock_resource "aws_service_discovery_http_namespace" {
    defaults = { arn = "arn:aws:servicediscovery:eu-west-1:123456789012:namespace/ns-mock" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/mock" }
  }
  mock_resource "aws_autoscaling_group" {
    defaults = { arn = "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:0000:autoScalingGroupName/mock" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/mock" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::mock" }
  }
  mock_resource "aws_efs_file_system" {
    defaults = { arn = "arn:aws:elasticfilesystem:eu-west-1:123456789012:file-system/fs-mock" }
  }
  mock_resource "aws_efs_access_point" {
    defaults = { arn = "arn:aws:elasticfilesystem:eu-west-1:123456789012:access-point/fsap-mock" }
  }
  mock_resource "aws_ecr_repository" {
    defaults = { arn = "arn:aws:ecr:eu-west-1:123456789012:repository/mock" }
  }
  mock_resource "aws_sfn_state_machine" {
    defaults = { arn = "arn:aws:states:eu-west-1:123456789012:stateMachine:mock" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0" }
  }
  mock_resource "aws_emrserverless_application" {
    defaults = { arn = "arn:aws:emr-serverless:eu-west-1:123456789012:/applications/00mockbatch" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = {
      arn                  = "arn:aws:ecs:eu-west-1:123456789012:task-definition/mock:1"
      arn_without_revision = "arn:aws:ecs:eu-west-1:123456789012:task-definition/mock"
    }
  }
  override_data {
    target = data.aws_availability_zones.available
    values = { names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
  }
  override_data {
    target = data.aws_caller_identity.current
    values = { account_id = "123456789012" }
  }
  override_data {
    target = data.aws_partition.current
    values = { partition = "aws" }
  }
  override_data {
    target = data.aws_ssm_parameter.ecs_ami
    values = { insecure_value = "ami-0123456789abcdef0" }
  }
  override_data {
    target = data.aws_elb_service_account.main
    values = { arn = "arn:aws:iam::156460612806:root" }
  }
  override_resource {
    target = aws_db_instance.main
    values = {
      address = "dc.cluster-abc.eu-west-1.rds.amazonaws.com"
      port    = 5432
      master_user_secret = [{
        secret_arn    = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-0000-AbCdEf"
        kms_key_id    = "arn:aws:kms:eu-west-1:123456789012:key/0000"
        secret_status = "active"
      }]
    }
  }
  override_resource {
    target = aws_secretsmanager_secret.token
    values = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:dc/token-AbCdEf" }
  }
  override_resource {
    target = aws_lb.api
    values = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/dc-api/0123456789abcdef", arn_suffix = "app/dc-api/0123456789abcdef", dns_name = "dc-api-1.eu-west-1.elb.amazonaws.com" }
  }
  override_resource {
    target = aws_lb_target_group.api
    values = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/dc-api/0123456789abcdef", arn_suffix = "targetgroup/dc-api/0123456789abcdef" }
  }
}

variables {
  environment     = "test"
  image_tag       = "1.2.3"
  certificate_arn = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  admin_token     = "test-admin-token-0123456789abcdef-0123456789"
  feedback_token  = "test-feedback-token-0123456789abcdef-012345"
}

run "stack" {
  command = apply

  # --- the load balancer ------------------------------------------------------------------
  assert {
    condition     = aws_lb_target_group.api.health_check[0].path == "/ready" && aws_lb_target_group.api.port == 8000
    error_message = "The API target group must check /ready on port 8000."
  }
  assert {
    condition     = aws_lb_listener.https.protocol == "HTTPS" && aws_lb_listener.https.certificate_arn == var.certificate_arn
    error_message = "The HTTPS listener must use the certificate variable."
  }
  assert {
    condition = (
      aws_lb_listener.http.default_action[0].type == "redirect"
      && aws_lb_listener.http.default_action[0].redirect[0].protocol == "HTTPS"
      && aws_lb_listener.http.default_action[0].redirect[0].status_code == "HTTP_301"
    )
    error_message = "HTTP must redirect to HTTPS."
  }
  assert {
    condition     = aws_lb.api.drop_invalid_header_fields && aws_lb.api.access_logs[0].enabled
    error_message = "The load balancer must drop invalid headers and write access logs."
  }
  assert {
    condition     = aws_lb_target_group.api.deregistration_delay == tostring(var.deregistration_delay_s)
    error_message = "The deregistration delay must follow its variable."
  }

  # --- the services -----------------------------------------------------------------------
  assert {
    condition = alltrue([
      for service in [aws_ecs_service.api, aws_ecs_service.embedder] :
      service.deployment_circuit_breaker[0].enable && service.deployment_circuit_breaker[0].rollback
    ])
    error_message = "Both services need the deployment circuit breaker with rollback."
  }
  assert {
    condition = (
      aws_ecs_service.api.name == "api" && aws_ecs_service.embedder.name == "embedder"
      && aws_ecs_service.api.deployment_minimum_healthy_percent == var.deployment_min_healthy_percent
      && aws_ecs_service.api.deployment_maximum_percent == var.deployment_max_percent
    )
    error_message = "Both services exist, with the healthy percentages of the variables."
  }
  assert {
    condition     = one(aws_ecs_service.api.load_balancer).container_port == 8000 && length(aws_ecs_service.embedder.load_balancer) == 0
    error_message = "Only the API is behind the load balancer."
  }
  assert {
    condition = (
      aws_ecs_service.embedder.service_connect_configuration[0].service[0].client_alias[0].port == 8501
      && jsondecode(aws_ecs_task_definition.api.container_definitions)[0].environment[
        index(jsondecode(aws_ecs_task_definition.api.container_definitions)[0].environment[*].name, "DC_EMBEDDER_URL")
      ].value == "http://embedder:8501"
    )
    error_message = "The API must reach the embedder at its Service Connect name."
  }
  assert {
    condition = alltrue([
      for definition in [aws_ecs_task_definition.api, aws_ecs_task_definition.embedder, aws_ecs_task_definition.job["train"]] :
      alltrue([
        for container in jsondecode(definition.container_definitions) :
        container.readonlyRootFilesystem && container.linuxParameters.initProcessEnabled
        && container.user == "10001:10001" && container.stopTimeout == var.stop_timeout_s
      ]) && definition.network_mode == "awsvpc"
    ])
    error_message = "Every container: read-only root, the init process, the images' user, the stop timeout, awsvpc."
  }
  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.api.container_definitions)[0].healthCheck.command[4] == "/health"
      && jsondecode(aws_ecs_task_definition.embedder.container_definitions)[0].healthCheck.command[4] == "/ready"
    )
    error_message = "Task health checks: the API's liveness (/health), the embedder's readiness (/ready)."
  }
  assert {
    condition = (
      one([for v in aws_ecs_task_definition.api.volume : v if v.name == "spool"]).efs_volume_configuration[0].transit_encryption == "ENABLED"
      && contains([for m in jsondecode(aws_ecs_task_definition.api.container_definitions)[0].mountPoints : m.containerPath if m.sourceVolume == "spool"], "/var/lib/dc/spool")
    )
    error_message = "The API's spool must be on EFS (encrypted in transit) at the images' spool path."
  }

  # --- secrets ----------------------------------------------------------------------------
  assert {
    condition = alltrue(flatten([
      for definition in concat([aws_ecs_task_definition.api, aws_ecs_task_definition.embedder], values(aws_ecs_task_definition.job)) : [
        for container in jsondecode(definition.container_definitions) : [
          for variable in container.environment :
          !contains(["DC_DATABASE_PASSWORD", "DC_ADMIN_TOKEN", "DC_FEEDBACK_TOKEN"], variable.name)
          && !strcontains(variable.value, "test-admin-token")
          && !strcontains(variable.value, "test-feedback-token")
          && !can(regex("://[^/@]*:[^/@]*@", variable.value))
        ]
      ]
    ]))
    error_message = "No secret may be a plain environment value (nor a password inside a URL)."
  }
  assert {
    condition = (
      toset([for s in jsondecode(aws_ecs_task_definition.api.container_definitions)[0].secrets : s.name])
      == toset(concat(
        ["DC_DATABASE_PASSWORD"],
        var.enable_admin_api ? ["DC_ADMIN_TOKEN"] : [],
        var.enable_feedback_api ? ["DC_FEEDBACK_TOKEN"] : [],
      ))
      && alltrue([for s in jsondecode(aws_ecs_task_definition.api.container_definitions)[0].secrets : startswith(s.valueFrom, "arn:aws:secretsmanager:")])
    )
    error_message = "The API gets its database password and its tokens from Secrets Manager."
  }

  # --- autoscaling and sizing ---------------------------------------------------------------
  assert {
    condition = (
      aws_appautoscaling_target.service["api"].min_capacity == var.api_min_tasks
      && aws_appautoscaling_target.service["api"].max_capacity == var.api_max_tasks
      && aws_appautoscaling_target.service["embedder"].min_capacity == var.embedder_min_tasks
      && aws_appautoscaling_target.service["embedder"].max_capacity == var.embedder_max_tasks
      && aws_ecs_service.api.desired_count == var.api_min_tasks
      && aws_ecs_service.embedder.desired_count == var.embedder_min_tasks
    )
    error_message = "Autoscaling bounds must follow the variables."
  }
  assert {
    condition = (
      aws_appautoscaling_policy.cpu["api"].target_tracking_scaling_policy_configuration[0].target_value == var.api_cpu_target
      && aws_appautoscaling_policy.cpu["embedder"].target_tracking_scaling_policy_configuration[0].target_value == var.embedder_cpu_target
      && aws_appautoscaling_policy.api_requests.target_tracking_scaling_policy_configuration[0].target_value == var.api_requests_per_target
      && aws_appautoscaling_policy.api_requests.target_tracking_scaling_policy_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ALBRequestCountPerTarget"
    )
    error_message = "The API scales on CPU and on requests per target, the embedder on CPU."
  }
  assert {
    condition = var.launch_type == "FARGATE" || (
      jsondecode(aws_ecs_task_definition.api.container_definitions)[0].memoryReservation == floor(var.api_memory / 2)
      && jsondecode(aws_ecs_task_definition.api.container_definitions)[0].cpu == var.api_cpu
      && jsondecode(aws_ecs_task_definition.embedder.container_definitions)[0].memoryReservation == floor(var.embedder_memory / 2)
    )
    error_message = "The sizing rule: a task reserves its full CPU share and half its memory limit."
  }
  assert {
    condition     = var.launch_type != "EC2" || (aws_autoscaling_group.ecs[0].min_size == var.asg_min_size && aws_autoscaling_group.ecs[0].max_size == var.asg_max_size && aws_ecs_capacity_provider.ec2[0].auto_scaling_group_provider[0].managed_termination_protection == "ENABLED")
    error_message = "The instances' bounds follow the variables, with managed termination protection."
  }

  # --- data -------------------------------------------------------------------------------
  assert {
    condition = alltrue([
      for block in values(aws_s3_bucket_public_access_block.bucket) :
      block.block_public_acls && block.block_public_policy && block.ignore_public_acls && block.restrict_public_buckets
    ])
    error_message = "Both buckets must block every kind of public access."
  }
  assert {
    condition = (
      one(one(aws_s3_bucket_server_side_encryption_configuration.artifacts.rule).apply_server_side_encryption_by_default).sse_algorithm == "aws:kms"
      && aws_s3_bucket_versioning.bucket["artifacts"].versioning_configuration[0].status == "Enabled"
    )
    error_message = "The artifact bucket must be encrypted with the stack's key and versioned."
  }
  assert {
    condition     = aws_s3_bucket.artifacts.bucket == "${var.project}-${var.environment}-artifacts-123456789012"
    error_message = "The artifact bucket's default name."
  }
  assert {
    condition = (
      aws_db_instance.main.storage_encrypted && !aws_db_instance.main.publicly_accessible
      && aws_db_instance.main.multi_az == var.db_multi_az
      && aws_db_instance.main.deletion_protection == var.db_deletion_protection
      && aws_db_instance.main.backup_retention_period == var.db_backup_retention_days
      && aws_db_instance.main.manage_master_user_password
    )
    error_message = "The database: encrypted, private, backed up, Multi-AZ and deletion protection by variable, its password kept by RDS."
  }
  assert {
    condition = (
      jsondecode(aws_cloudwatch_event_rule.database_password_rotated.event_pattern).detail.additionalEventData.SecretId
      == [aws_db_instance.main.master_user_secret[0].secret_arn]
      && jsondecode(aws_sfn_state_machine.redeploy_api.definition).States.UpdateService.Parameters.Service == "api"
      && jsondecode(aws_sfn_state_machine.redeploy_api.definition).States.UpdateService.Parameters.ForceNewDeployment
    )
    error_message = "A rotation of the database secret must redeploy the API (new tasks read the new password)."
  }
  assert {
    condition     = aws_scheduler_schedule.job["train"].state == (var.retrain_schedule_enabled ? "ENABLED" : "DISABLED")
    error_message = "The retraining schedule follows retrain_schedule_enabled."
  }
  assert {
    condition     = aws_scheduler_schedule.job["report"].state == "ENABLED" && aws_scheduler_schedule.job["report"].schedule_expression == var.report_schedule
    error_message = "The daily report runs on report_schedule, on by default."
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.job["report"].container_definitions)[0].command == ["python", "scripts/report.py", "--all", "--days", "1"]
    error_message = "The report task runs scripts/report.py for every model and the last day."
  }
  assert {
    condition     = alltrue([for repository in values(aws_ecr_repository.image) : repository.image_tag_mutability == "IMMUTABLE" && repository.image_scanning_configuration[0].scan_on_push])
    error_message = "ECR: immutable tags, scanned on push."
  }

  # --- batch on EMR Serverless: only with batch_enabled ------------------------------------
  assert {
    condition = alltrue([
      for n in [length(aws_emrserverless_application.batch), length(aws_iam_role.batch), length(aws_security_group.batch)] :
      n == (var.batch_enabled ? 1 : 0)
    ]) && contains(keys(aws_vpc_security_group_ingress_rule.peer), "batch_to_db") == var.batch_enabled
    error_message = "The batch application, its role, its security group and its database rule exist exactly when batch_enabled."
  }
  assert {
    condition     = var.batch_enabled || (output.batch_application_id == null && output.batch_s3 == null && output.batch_start_job_run == null)
    error_message = "With batch off, the batch outputs are null."
  }
}

run "batch" {
  command = apply

  variables {
    batch_enabled              = true
    batch_max_vcpu             = 32
    batch_max_memory_gb        = 128
    batch_idle_timeout_minutes = 20
    batch_executor_cores       = 4
  }

  assert {
    condition = (
      lower(aws_emrserverless_application.batch[0].type) == "spark"
      && aws_emrserverless_application.batch[0].architecture == "X86_64"
      && startswith(aws_emrserverless_application.batch[0].release_label, "emr-7.")
      && aws_emrserverless_application.batch[0].name == "${var.project}-${var.environment}-batch"
    )
    error_message = "A Spark application on an emr-7 release, x86_64, named after the stack."
  }
  assert {
    condition = (
      aws_emrserverless_application.batch[0].maximum_capacity[0].cpu == "32 vCPU"
      && aws_emrserverless_application.batch[0].maximum_capacity[0].memory == "128 GB"
      && aws_emrserverless_application.batch[0].auto_start_configuration[0].enabled
      && aws_emrserverless_application.batch[0].auto_stop_configuration[0].enabled
      && aws_emrserverless_application.batch[0].auto_stop_configuration[0].idle_timeout_minutes == 20
      && length(aws_emrserverless_application.batch[0].initial_capacity) == 0
    )
    error_message = "Capacity capped by the variables, started by a job, stopped when idle, nothing pre-initialised (free while idle)."
  }
  assert {
    condition = (
      toset(aws_emrserverless_application.batch[0].network_configuration[0].subnet_ids) == toset(aws_subnet.private[*].id)
      && aws_emrserverless_application.batch[0].network_configuration[0].security_group_ids == toset([aws_security_group.batch[0].id])
    )
    error_message = "The batch workers run in the private subnets with their own security group."
  }
  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.peer["batch_to_db"].security_group_id == aws_security_group.database.id
      && aws_vpc_security_group_ingress_rule.peer["batch_to_db"].referenced_security_group_id == aws_security_group.batch[0].id
      && aws_vpc_security_group_ingress_rule.peer["batch_to_db"].from_port == 5432
      && aws_vpc_security_group_egress_rule.peer["batch_to_db"].security_group_id == aws_security_group.batch[0].id
      && aws_vpc_security_group_egress_rule.https["batch"].security_group_id == aws_security_group.batch[0].id
      && aws_vpc_security_group_egress_rule.https["batch"].from_port == 443
      && length([for rule in values(aws_vpc_security_group_ingress_rule.peer) : rule if rule.security_group_id == aws_security_group.batch[0].id]) == 0
    )
    error_message = "The batch workers reach PostgreSQL (a rule on the database's group) and HTTPS, and nothing reaches them."
  }
  assert {
    condition = (
      one(data.aws_iam_policy_document.batch_assume[0].statement[0].principals).identifiers == toset(["emr-serverless.amazonaws.com"])
      && contains([for c in data.aws_iam_policy_document.batch_assume[0].statement[0].condition : c.variable], "aws:SourceAccount")
      && aws_iam_role_policy.batch[0].role == aws_iam_role.batch[0].id
    )
    error_message = "The job role is assumed by EMR Serverless of this account only, and carries the batch policy."
  }
  assert {
    condition = alltrue(flatten([
      for statement in data.aws_iam_policy_document.batch[0].statement : [
        for arn in statement.resources :
        arn == aws_s3_bucket.artifacts.arn || arn == aws_kms_key.main.arn
        || arn == aws_db_instance.main.master_user_secret[0].secret_arn
        || startswith(arn, "${aws_s3_bucket.artifacts.arn}/${var.s3_prefix}/")
        || startswith(arn, "${aws_s3_bucket.artifacts.arn}/${var.batch_s3_prefix}/")
      ]
    ]))
    error_message = "The job role touches the artifact bucket's two prefixes, the stack's key and the database secret only (no \"*\")."
  }
  assert {
    condition = alltrue(flatten([
      for statement in data.aws_iam_policy_document.batch[0].statement : [
        for arn in statement.resources :
        anytrue([for part in ["output", "reports", "logs"] : startswith(arn, "${aws_s3_bucket.artifacts.arn}/${var.batch_s3_prefix}/${part}/")])
      ] if length(setintersection(statement.actions, ["s3:PutObject", "s3:DeleteObject"])) > 0
    ]))
    error_message = "The job role writes only under <batch>/output, reports and logs: never the backups, its code or its inputs."
  }
  assert {
    condition = (
      output.batch_s3.entry_point == "s3://${aws_s3_bucket.artifacts.bucket}/${var.batch_s3_prefix}/releases/${var.image_tag}/batch.py"
      && strcontains(output.batch_spark_submit_parameters, "--conf spark.archives=${output.batch_s3.venv_archive}#environment")
      && strcontains(output.batch_spark_submit_parameters, "--conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python")
      && strcontains(output.batch_spark_submit_parameters, "--conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python")
      && strcontains(output.batch_spark_submit_parameters, "--conf spark.jars=${output.batch_s3.jdbc_driver}")
      && strcontains(output.batch_spark_submit_parameters, "--conf spark.dynamicAllocation.maxExecutors=7")
      && !strcontains(output.batch_spark_submit_parameters, "PASSWORD")
      && !can(regex("://[^/@]*:[^/@]*@", output.batch_spark_submit_parameters))
      && strcontains(output.batch_start_job_run, "--application-id ${aws_emrserverless_application.batch[0].id}")
    )
    error_message = "The outputs: the release's keys under batch_s3_prefix, the archive as ./environment and its Python, the JDBC driver, the executors the capacity allows, no secret."
  }
}

run "batch_writes_apart_from_the_backups" {
  command = plan

  variables {
    batch_enabled   = true
    batch_s3_prefix = "dc-artifacts"
  }

  expect_failures = [var.batch_s3_prefix]
}

run "bounds_follow_the_variables" {
  command = plan

  variables {
    api_min_tasks      = 3
    api_max_tasks      = 7
    embedder_min_tasks = 1
    embedder_max_tasks = 5
  }

  assert {
    condition = (
      aws_appautoscaling_target.service["api"].min_capacity == 3 && aws_appautoscaling_target.service["api"].max_capacity == 7
      && aws_appautoscaling_target.service["embedder"].min_capacity == 1 && aws_appautoscaling_target.service["embedder"].max_capacity == 5
    )
    error_message = "The bounds must be exactly the variables."
  }
}

run "fargate" {
  command = plan

  variables {
    launch_type = "FARGATE"
  }

  assert {
    condition = (
      length(aws_autoscaling_group.ecs) == 0 && length(aws_launch_template.ecs) == 0
      && aws_ecs_task_definition.api.requires_compatibilities == toset(["FARGATE"])
      && aws_ecs_task_definition.api.cpu == tostring(var.api_cpu)
      && [for c in aws_ecs_service.api.capacity_provider_strategy : c.capacity_provider] == ["FARGATE"]
    )
    error_message = "launch_type = FARGATE: no instances, tasks sized at the task level on Fargate."
  }
}

run "existing_vpc" {
  command = plan

  variables {
    create_vpc         = false
    vpc_id             = "vpc-0123456789abcdef0"
    public_subnet_ids  = ["subnet-0000000000000000a", "subnet-0000000000000000b"]
    private_subnet_ids = ["subnet-0000000000000000c", "subnet-0000000000000000d"]
  }

  assert {
    condition     = length(aws_vpc.main) == 0 && length(aws_nat_gateway.main) == 0 && aws_lb.api.subnets == toset(var.public_subnet_ids)
    error_message = "create_vpc = false: no network is created and the given subnets are used."
  }
}

run "admin_api_off" {
  command = plan

  variables {
    enable_admin_api = false
    admin_token      = null
  }

  assert {
    condition     = keys(aws_secretsmanager_secret.token) == ["feedback"]
    error_message = "No admin secret when the admin API is off."
  }
}

run "feedback_token_required" {
  command = plan

  variables {
    feedback_token = null
  }

  expect_failures = [var.feedback_token]
}

run "admin_token_required" {
  command = plan

  variables {
    admin_token = "short"
  }

  expect_failures = [var.admin_token]
}

run "stop_timeout_must_cover_the_flush" {
  command = plan

  variables {
    stop_timeout_s         = 30
    api_graceful_timeout_s = 30
  }

  expect_failures = [aws_ecs_task_definition.api]
}

run "settings_cannot_rewire_the_stack" {
  command = plan

  variables {
    api_settings = { DC_DATABASE_URL = "postgresql+psycopg2://elsewhere/db" }
  }

  expect_failures = [aws_ecs_task_definition.api]
}

run "latest_is_not_a_release" {
  command = plan

  variables {
    image_tag = "latest"
  }

  expect_failures = [var.image_tag]
}
