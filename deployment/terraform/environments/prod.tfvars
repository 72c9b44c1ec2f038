# terraform plan -var-file=environments/prod.tfvars -var image_tag=<tag> (TF_VAR_admin_token set)
# The defaults are production sizes (variables.tf); this file names the environment, its
# certificate, and what production raises: three instances, a larger database with longer
# backups, bigger caches, the weekly retraining on, the batch application on EMR Serverless.
environment     = "prod"
certificate_arn = "arn:aws:acm:eu-west-1:123456789012:certificate/11111111-1111-1111-1111-111111111111"

asg_min_size  = 3
asg_max_size  = 8
api_min_tasks = 3
api_max_tasks = 12

db_instance_class           = "db.t4g.large"
db_allocated_storage_gb     = 100
db_max_allocated_storage_gb = 1000
db_backup_retention_days    = 30

retrain_schedule_enabled = true

# Replays of candidate versions run against production's inference log, and backfills against
# its data: the application exists here (free while no job runs; a job starts it). Dev runs
# scripts/batch.py locally (local[N]) against its small database and leaves it off.
batch_enabled = true

api_settings = {
  DC_API_THREADS           = "4"
  DC_PREDICTION_CACHE_SIZE = "50000"
}
embedder_settings = {
  DC_CACHE_SIZE = "200000"
}
