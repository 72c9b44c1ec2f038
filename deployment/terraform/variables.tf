# Every input of the stack. The defaults are the production sizes the README's cost estimate
# prices; environments/dev.tfvars and environments/prod.tfvars set what differs. The README's
# variable table is generated from this file (a test keeps them in step).

# --- naming and placement -------------------------------------------------------------------

variable "project" {
  description = "Short name that prefixes every resource (with the environment: dc-prod-api)."
  type        = string
  default     = "dc"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.project))
    error_message = "project: 2-12 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "environment" {
  description = "Environment name (dev, prod, ...): the second part of every name, and a tag."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.environment))
    error_message = "environment: 2-10 lowercase letters or digits, starting with a letter."
  }
}

variable "aws_region" {
  description = "AWS region of the whole stack (also the services' DC_AWS_REGION)."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Extra tags on every resource (Project, Environment and ManagedBy are always set)."
  type        = map(string)
  default     = {}
}

# --- network --------------------------------------------------------------------------------

variable "create_vpc" {
  description = "true: create a VPC with public and private subnets in az_count zones; false: use vpc_id and the subnet ids below."
  type        = bool
  default     = true
}

variable "vpc_cidr" {
  description = "CIDR block of the created VPC (create_vpc = true); /17 or larger, split into /20 subnets."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 17
    error_message = "vpc_cidr: an IPv4 CIDR block of /17 or larger."
  }
}

variable "az_count" {
  description = "Availability zones the created VPC spans (2 or 3); RDS Multi-AZ needs at least 2."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 3
    error_message = "az_count: 2 or 3."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all private subnets (cheaper, dev) instead of one per zone (a zone outage then cuts the others' egress)."
  type        = bool
  default     = false
}

variable "vpc_id" {
  description = "Existing VPC id (create_vpc = false)."
  type        = string
  default     = ""
}

variable "public_subnet_ids" {
  description = "Existing public subnet ids for the load balancer, one per zone (create_vpc = false)."
  type        = list(string)
  default     = []
}

variable "private_subnet_ids" {
  description = "Existing private subnet ids (with egress through NAT) for the tasks, the database and EFS (create_vpc = false)."
  type        = list(string)
  default     = []
}

variable "alb_ingress_cidrs" {
  description = "IPv4 ranges allowed to reach the load balancer on 80 and 443."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

# --- the ECS cluster and its capacity -------------------------------------------------------

variable "launch_type" {
  description = "EC2: tasks on the Auto Scaling group's T3 instances (the measured choice: about half Fargate's price); FARGATE: serverless, no instances."
  type        = string
  default     = "EC2"

  validation {
    condition     = contains(["EC2", "FARGATE"], var.launch_type)
    error_message = "launch_type: EC2 or FARGATE."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the capacity provider (T3 for burst credits; the task sizes below assume 2 vCPUs)."
  type        = string
  default     = "t3.large"
}

variable "cpu_credits" {
  description = "T3 credit mode: standard (bursts only on earned credits, never billed extra) or unlimited (bursts on, billed per surplus vCPU-hour)."
  type        = string
  default     = "standard"

  validation {
    condition     = contains(["standard", "unlimited"], var.cpu_credits)
    error_message = "cpu_credits: standard or unlimited."
  }
}

variable "instance_root_volume_gb" {
  description = "Root EBS volume (gp3, encrypted) of each instance: images and task volumes live here."
  type        = number
  default     = 40
}

variable "asg_min_size" {
  description = "Fewest instances of the capacity provider (EC2)."
  type        = number
  default     = 2
}

variable "asg_max_size" {
  description = "Most instances of the capacity provider (EC2); managed scaling stays inside [min, max]."
  type        = number
  default     = 6

  validation {
    condition     = var.asg_max_size >= 1
    error_message = "asg_max_size: at least 1."
  }
}

variable "capacity_target_percent" {
  description = "Managed scaling's target use of the instances (100: no spare instance; 80: keeps headroom so a scale-out task starts without waiting 1-5 minutes for an instance)."
  type        = number
  default     = 80

  validation {
    condition     = var.capacity_target_percent >= 1 && var.capacity_target_percent <= 100
    error_message = "capacity_target_percent: 1-100."
  }
}

variable "container_insights" {
  description = "ECS Container Insights on the cluster: enabled, enhanced (per-container metrics, more CloudWatch cost) or disabled."
  type        = string
  default     = "enabled"

  validation {
    condition     = contains(["enabled", "enhanced", "disabled"], var.container_insights)
    error_message = "container_insights: enabled, enhanced or disabled."
  }
}

# --- images ---------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of dc-api, dc-embedder and dc-trainer to run (immutable: a release's version or git revision). Rolling back the code is re-applying the previous tag."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag: a Docker tag, and not latest (the repositories' tags are immutable)."
  }
}

variable "ecr_keep_images" {
  description = "Tagged images each ECR repository keeps (older ones expire); untagged ones expire after a day."
  type        = number
  default     = 30
}

# --- the prediction API service ---------------------------------------------------------------

variable "api_cpu" {
  description = "CPU units of one API task (1024 = one vCPU): its full share of an instance, which also sets DC_API_WORKERS (one per 512 units)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.api_cpu)
    error_message = "api_cpu: 256, 512, 1024, 2048 or 4096."
  }
}

variable "api_memory" {
  description = "Memory limit (MiB) of one API task; it reserves half of it (the sizing rule: one more task always fits)."
  type        = number
  default     = 2048
}

variable "api_min_tasks" {
  description = "Fewest API tasks (also the count at creation); autoscaling stays inside [min, max]."
  type        = number
  default     = 2
}

variable "api_max_tasks" {
  description = "Most API tasks."
  type        = number
  default     = 10
}

variable "api_cpu_target" {
  description = "API autoscaling: target average CPU use (percent of the reserved units)."
  type        = number
  default     = 60
}

variable "api_requests_per_target" {
  description = "API autoscaling: target ALB requests per task per minute (measured: one 2-worker task serves about 600 new phrases/s and thousands of cached ones; 30,000/min is 500/s)."
  type        = number
  default     = 30000
}

variable "api_settings" {
  description = "More DC_* settings for the API tasks (README settings table), over the stack's own, e.g. { DC_API_THREADS = \"8\" }. The stack's wiring (database, embedder URL, bucket, ports, paths) and the secrets cannot be set here."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.api_settings) : can(regex("^DC_[A-Z0-9_]+$", k))])
    error_message = "api_settings: keys are DC_* setting names."
  }
}

# --- the embedder service -------------------------------------------------------------------

variable "encoder_backend" {
  description = "The encoder's runtime (DC_ENCODER_BACKEND), one value for the embedder service, the trainer and the batch job, so their vectors and fingerprints agree: onnx (ONNX Runtime fp32, the default), onnx-int8 (its own fingerprint: heads must be trained on it) or tf (the TF-Hub SavedModel)."
  type        = string
  default     = "onnx"

  validation {
    condition     = contains(["onnx", "onnx-int8", "tf"], var.encoder_backend)
    error_message = "encoder_backend: onnx, onnx-int8 or tf."
  }
}

variable "embedder_cpu" {
  description = "CPU units of one embedder task: its full share, which also sets DC_ENCODER_WORKERS (one per 512 units)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([512, 1024, 2048, 4096], var.embedder_cpu)
    error_message = "embedder_cpu: 512, 1024, 2048 or 4096."
  }
}

variable "embedder_memory" {
  description = "Memory limit (MiB) of one embedder task (the encoder takes about 0.8 GB, the 50,000-phrase cache about 80 MB); it reserves half."
  type        = number
  default     = 3072
}

variable "embedder_min_tasks" {
  description = "Fewest embedder tasks (the central service every API task calls)."
  type        = number
  default     = 2
}

variable "embedder_max_tasks" {
  description = "Most embedder tasks."
  type        = number
  default     = 4
}

variable "embedder_cpu_target" {
  description = "Embedder autoscaling: target average CPU use (percent). Every cache miss costs encoder CPU, so CPU is its load signal."
  type        = number
  default     = 60
}

variable "embedder_settings" {
  description = "More DC_* settings for the embedder tasks, over the stack's own, e.g. { DC_CACHE_SIZE = \"100000\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.embedder_settings) : can(regex("^DC_[A-Z0-9_]+$", k))])
    error_message = "embedder_settings: keys are DC_* setting names."
  }
}

# --- both services: deployments and stopping ------------------------------------------------

variable "deployment_min_healthy_percent" {
  description = "Rolling deployments keep at least this share of the desired tasks running."
  type        = number
  default     = 100
}

variable "deployment_max_percent" {
  description = "Rolling deployments run at most this share of the desired tasks (old and new together)."
  type        = number
  default     = 200
}

variable "health_check_grace_period_s" {
  description = "Seconds a new API task may take to pass the load balancer's health check (start-up, migrations, loading every head)."
  type        = number
  default     = 120
}

variable "stop_timeout_s" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (at most 120): longer than DC_API_GRACEFUL_TIMEOUT_S, so every worker flushes its inference log."
  type        = number
  default     = 45

  validation {
    condition     = var.stop_timeout_s >= 2 && var.stop_timeout_s <= 120
    error_message = "stop_timeout_s: 2-120 (the ECS limit)."
  }
}

variable "api_graceful_timeout_s" {
  description = "DC_API_GRACEFUL_TIMEOUT_S: seconds an API worker may take on SIGTERM to finish its requests and flush the inference log (less than stop_timeout_s)."
  type        = number
  default     = 30
}

variable "log_retention_days" {
  description = "CloudWatch retention (days) of the services' and jobs' logs; a year by default (a few GB a month, cents per GB stored)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: one of CloudWatch's retention values (1, 3, 5, 7, 14, 30, 60, 90, ... 365, ...)."
  }
}

# --- the load balancer ----------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener (the API's public name)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn: an ACM certificate ARN."
  }
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "deregistration_delay_s" {
  description = "Seconds the load balancer keeps sending a stopping API task its in-flight requests before deregistering it."
  type        = number
  default     = 30
}

variable "alb_idle_timeout_s" {
  description = "Load balancer idle timeout; keep it below gunicorn's keep-alive handling (the workers close idle clients after DC_REQUEST_READ_TIMEOUT_S)."
  type        = number
  default     = 60
}

variable "alb_deletion_protection" {
  description = "Deletion protection on the load balancer."
  type        = bool
  default     = true
}

variable "access_logs_retention_days" {
  description = "Days the load balancer's access logs are kept in their bucket."
  type        = number
  default     = 90
}

# --- the database ---------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class of the PostgreSQL database (training data, model registry, inference log)."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version (minor versions upgrade automatically)."
  type        = string
  default     = "16"
}

variable "db_allocated_storage_gb" {
  description = "Initial gp3 storage of the database (GiB)."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling (GiB): the inference log grows with traffic."
  type        = number
  default     = 500
}

variable "db_multi_az" {
  description = "A standby in a second zone with automatic failover."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Refuse to delete the database (and take a final snapshot when it is deleted)."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days: 1-35 (0 would turn backups off)."
  }
}

variable "db_name" {
  description = "Database name."
  type        = string
  default     = "dc"
}

variable "db_username" {
  description = "Master user name; its password is generated and kept by RDS in Secrets Manager (never in Terraform state)."
  type        = string
  default     = "dc"
}

variable "db_performance_insights_retention_days" {
  description = "Performance Insights retention (7 is the free tier)."
  type        = number
  default     = 7
}

# --- artifacts and backups ------------------------------------------------------------------

variable "artifacts_bucket_name" {
  description = "Name of the artifact bucket (DC_S3_BUCKET); empty: <project>-<environment>-artifacts-<account id>."
  type        = string
  default     = ""
}

variable "s3_prefix" {
  description = "DC_S3_PREFIX: key prefix of the artifact backups; the tasks may read and write only under it."
  type        = string
  default     = "dc-artifacts"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.s3_prefix))
    error_message = "s3_prefix: one path segment, no slashes."
  }
}

variable "artifacts_noncurrent_days" {
  description = "Days an overwritten or deleted artifact version is kept before it expires (promoted versions are never overwritten: each version has its own key)."
  type        = number
  default     = 90
}

# --- secrets --------------------------------------------------------------------------------

variable "enable_admin_api" {
  description = "Serve the admin endpoints (reload, rollback, promote): a DC_ADMIN_TOKEN secret is created from admin_token. false: no token, the endpoints answer 403."
  type        = bool
  default     = true
}

variable "admin_token" {
  description = "The admin bearer token (at least 32 characters), e.g. TF_VAR_admin_token=$(openssl rand -hex 32). Ephemeral: written to Secrets Manager write-only, never stored in the state or the plan."
  type        = string
  default     = null
  ephemeral   = true
  sensitive   = true

  validation {
    condition     = !var.enable_admin_api || try(length(var.admin_token) >= 32, false)
    error_message = "admin_token: required (at least 32 characters) while enable_admin_api is true."
  }
}

variable "admin_token_version" {
  description = "Raise it to write a new admin_token (write-only values are applied only when their version changes)."
  type        = number
  default     = 1
}

variable "enable_feedback_api" {
  description = "Accept ground truth on POST /feedback: a DC_FEEDBACK_TOKEN secret is created from feedback_token. false: the endpoint answers 403."
  type        = bool
  default     = true
}

variable "feedback_token" {
  description = "The bearer token of POST /feedback (at least 32 characters, not the admin token): whoever reports outcomes. Ephemeral, written write-only, as admin_token."
  type        = string
  default     = null
  ephemeral   = true
  sensitive   = true

  validation {
    condition     = !var.enable_feedback_api || try(length(var.feedback_token) >= 32, false)
    error_message = "feedback_token: required (at least 32 characters) while enable_feedback_api is true."
  }
}

variable "feedback_token_version" {
  description = "Raise it to write a new feedback_token."
  type        = number
  default     = 1
}

# --- jobs -----------------------------------------------------------------------------------

variable "trainer_cpu" {
  description = "CPU units of the migration and retraining tasks."
  type        = number
  default     = 2048
}

variable "trainer_memory" {
  description = "Memory limit (MiB) of the retraining task (the encoder plus the training extract)."
  type        = number
  default     = 6144
}

variable "train_command" {
  description = "Arguments of the retraining task's `train` role (scripts/train.py)."
  type        = list(string)
  default     = ["--all", "--promote"]
}

variable "retrain_schedule" {
  description = "EventBridge Scheduler expression of the periodic retraining (UTC)."
  type        = string
  default     = "cron(0 3 ? * SUN *)"
}

variable "retrain_schedule_enabled" {
  description = "Run the retraining on its schedule (off by default: retrain on purpose first, then turn it on)."
  type        = bool
  default     = false
}

variable "report_command" {
  description = "Arguments of the report task (scripts/report.py): by default every model's report of the last complete UTC day."
  type        = list(string)
  default     = ["--all", "--days", "1"]
}

variable "report_schedule" {
  description = "EventBridge Scheduler expression of the daily production reports (UTC)."
  type        = string
  default     = "cron(30 0 * * ? *)"
}

variable "report_schedule_enabled" {
  description = "Write the production reports on their schedule."
  type        = bool
  default     = true
}

variable "trainer_settings" {
  description = "More DC_* settings for the migration and retraining tasks, e.g. { DC_PROMOTION_TOLERANCE = \"0.01\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.trainer_settings) : can(regex("^DC_[A-Z0-9_]+$", k))])
    error_message = "trainer_settings: keys are DC_* setting names."
  }
}

# --- batch on EMR Serverless (emr.tf) -------------------------------------------------------

variable "batch_enabled" {
  description = "Create the EMR Serverless application of scripts/batch.py (score, embed, replay on Spark), its job role and security group. Free while no job runs (no pre-initialised capacity); jobs are billed per vCPU-hour and GB-hour."
  type        = bool
  default     = false
}

variable "batch_release_label" {
  description = "EMR release of the batch application: an emr-7.x (Spark 3.5 on Amazon Linux 2023, which the batch-venv archive is built for; its own Python 3.9 is not used)."
  type        = string
  default     = "emr-7.12.0"

  validation {
    condition     = can(regex("^emr-7\\.[0-9]+\\.[0-9]+$", var.batch_release_label))
    error_message = "batch_release_label: emr-7.x.y (the batch archive targets Amazon Linux 2023 and Spark 3.5)."
  }
}

variable "batch_max_vcpu" {
  description = "Most vCPUs the batch application's workers hold at once, all job runs together (maximum_capacity; the account's EMR Serverless vCPU quota caps it too)."
  type        = number
  default     = 16

  validation {
    condition     = var.batch_max_vcpu >= 4 && floor(var.batch_max_vcpu) == var.batch_max_vcpu
    error_message = "batch_max_vcpu: a whole number, at least 4 (the driver's 2 and one executor)."
  }
}

variable "batch_max_memory_gb" {
  description = "Most memory (GB) the batch application's workers hold at once (maximum_capacity)."
  type        = number
  default     = 64

  validation {
    condition     = var.batch_max_memory_gb >= 2 * var.batch_max_vcpu && floor(var.batch_max_memory_gb) == var.batch_max_memory_gb
    error_message = "batch_max_memory_gb: a whole number, at least 2 GB per vCPU of batch_max_vcpu (EMR Serverless's smallest worker ratio)."
  }
}

variable "batch_idle_timeout_minutes" {
  description = "Minutes the batch application stays started without a job before it stops itself (its workers are released either way when a job ends)."
  type        = number
  default     = 15

  validation {
    condition     = var.batch_idle_timeout_minutes >= 1 && var.batch_idle_timeout_minutes <= 10080
    error_message = "batch_idle_timeout_minutes: 1-10080 (a week)."
  }
}

variable "batch_executor_cores" {
  description = "spark.executor.cores of the batch jobs (DC_BATCH_EXECUTOR_CORES): Python workers per executor, each loading the encoder once; an executor also gets 1 GB per core beside its JVM memory."
  type        = number
  default     = 4

  validation {
    condition     = contains([1, 2, 4, 8, 16], var.batch_executor_cores)
    error_message = "batch_executor_cores: 1, 2, 4, 8 or 16 (EMR Serverless worker sizes)."
  }
}

variable "batch_executor_memory_gb" {
  description = "spark.executor.memory (GB) of the batch jobs (DC_BATCH_EXECUTOR_MEMORY); with the 1 GB per core beside it, an executor must fit EMR Serverless's worker sizes (4 vCPU: 8-30 GB)."
  type        = number
  default     = 8
}

variable "batch_s3_prefix" {
  description = "Key prefix of the batch jobs in the artifact bucket (code, venv archive, inputs, outputs, reports, logs); the job role writes only under it."
  type        = string
  default     = "batch"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.batch_s3_prefix)) && var.batch_s3_prefix != var.s3_prefix
    error_message = "batch_s3_prefix: one path segment, no slashes, not s3_prefix (the batch jobs must not write among the backups)."
  }
}
