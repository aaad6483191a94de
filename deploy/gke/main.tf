# parallel-ml on GKE: a cluster with separate node pools for parameter servers and workers, a GCS
# bucket for model dirs, an Artifact Registry repository for the trainer image, and Workload
# Identity binding one shared Kubernetes ServiceAccount (var.namespace/var.kubernetes_service_account)
# to a Google service account that may use the bucket. The README's "GKE, step by step" walks
# through it: `terraform output -raw service_account_manifest | kubectl apply -f -` creates that
# Kubernetes ServiceAccount once, and every job names it with service_account: {create: false}.
# push-image.sh pushes the image afterwards.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

# The APIs a new project lacks. Of these, only storage is on by default ("Services enabled by default":
# cloud.google.com/service-usage/docs/enabled-service). iam: google_service_account and the IAM bindings
# below; iamcredentials: Workload Identity, through which the pods get the trainer account's tokens
# (cloud.google.com/kubernetes-engine/docs/how-to/workload-identity, "Before you begin");
# cloudresourcemanager: data.google_project and the project's IAM.
resource "google_project_service" "apis" {
  for_each = toset([
    "container.googleapis.com",
    "artifactregistry.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "cloudresourcemanager.googleapis.com",
  ])
  service            = each.key
  disable_on_destroy = false
}

resource "google_container_cluster" "pml" {
  name     = var.cluster
  location = var.zone

  # Node pools are managed below; the default one is removed right after creation.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = false

  workload_identity_config {
    workload_pool = "${var.project}.svc.id.goog"
  }

  # GKE Dataplane V2: without it (or the older network policy add-on) GKE accepts the chart's
  # NetworkPolicy but does not enforce it, and TensorFlow's unauthenticated gRPC ports (2222, 2223)
  # stay open to every pod in the cluster. Dataplane V2 enforces NetworkPolicy itself and needs a
  # VPC-native cluster (ip_allocation_policy; GKE picks the ranges). It can only be chosen when
  # the cluster is created.
  datapath_provider = "ADVANCED_DATAPATH"
  ip_allocation_policy {}

  depends_on = [google_project_service.apis]
}

# kube-system (kube-dns, metrics-server, konnectivity agents): one small node that is always there, so
# that the cluster works before any job asks the autoscaler for a worker node. Its label keeps jobs off
# it only where they ask for their pool (roles.<role>.node_selector {pml/pool: workers}).
resource "google_container_node_pool" "system" {
  name       = "system"
  cluster    = google_container_cluster.pml.id
  location   = var.zone
  node_count = 1

  node_config {
    machine_type = var.system_machine_type
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels       = { "pml/pool" = "system" }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# The chief and the workers: compute, scaled with the job.
resource "google_container_node_pool" "workers" {
  name     = "workers"
  cluster  = google_container_cluster.pml.id
  location = var.zone

  autoscaling {
    min_node_count = 0
    max_node_count = var.max_worker_nodes
  }

  node_config {
    machine_type = var.worker_machine_type
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels       = { "pml/pool" = "workers" }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# Parameter servers: memory for the variables, never preempted. The taint keeps other pods off;
# jobs place ps here with roles.ps.node_selector {pml/pool: ps} and a matching toleration.
resource "google_container_node_pool" "ps" {
  name     = "ps"
  cluster  = google_container_cluster.pml.id
  location = var.zone

  autoscaling {
    min_node_count = 0
    max_node_count = var.max_ps_nodes
  }

  node_config {
    machine_type = var.ps_machine_type
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels       = { "pml/pool" = "ps" }
    taint {
      key    = "pml/pool"
      value  = "ps"
      effect = "NO_SCHEDULE"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# Workers on Spot VMs, when max_spot_worker_nodes > 0: cheaper, and taken back by Compute Engine at
# 30 s notice. GKE labels Spot nodes cloud.google.com/gke-spot=true; the taint of the same name keeps
# every pod off them that does not tolerate it (cloud.google.com/kubernetes-engine/docs/how-to/spot-vms).
# A job sends its workers here with roles.worker.node_selector {cloud.google.com/gke-spot: "true"} and
# the toleration of that taint (docs/kubernetes.md, "Workers on Spot VMs"); its chief and ps stay on
# the standard pools, which are never preempted.
resource "google_container_node_pool" "spot_workers" {
  count    = var.max_spot_worker_nodes > 0 ? 1 : 0
  name     = "spot-workers"
  cluster  = google_container_cluster.pml.id
  location = var.zone

  autoscaling {
    min_node_count = 0
    max_node_count = var.max_spot_worker_nodes
  }

  node_config {
    machine_type = var.worker_machine_type
    spot         = true
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    labels       = { "pml/pool" = "spot-workers" }
    taint {
      key    = "cloud.google.com/gke-spot"
      value  = "true"
      effect = "NO_SCHEDULE"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_storage_bucket" "models" {
  name                        = var.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  force_destroy               = false
  depends_on                  = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "images" {
  repository_id = var.repository
  location      = var.region
  format        = "DOCKER"
  depends_on    = [google_project_service.apis]
}

# The identity the job's pods act as: read and write model dirs in the bucket, nothing else.
resource "google_service_account" "trainer" {
  account_id   = "pml-trainer"
  display_name = "parallel-ml trainer pods"
  depends_on   = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "trainer_objects" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.trainer.email}"
}

# Workload Identity: the Kubernetes ServiceAccount NAMESPACE/KSA may act as the Google one.
# That ServiceAccount is shared by every job and outlives them: the service_account_manifest
# output creates it, annotated with the Google account, and jobs name it with
# service_account: {create: false, name: KSA} (and namespace: NAMESPACE), so that no job creates
# it (a second job would get 409) or deletes it (`pmlctl delete` would cut off the others).
resource "google_service_account_iam_member" "workload_identity" {
  service_account_id = google_service_account.trainer.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[${var.namespace}/${var.kubernetes_service_account}]"
  depends_on         = [google_container_cluster.pml]
}

# The nodes pull the trainer image from the repository.
resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  repository = google_artifact_registry_repository.images.name
  location   = var.region
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${data.google_project.this.number}-compute@developer.gserviceaccount.com"
}

data "google_project" "this" {
  depends_on = [google_project_service.apis]
}
