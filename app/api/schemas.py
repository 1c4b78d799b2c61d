"""Request and response bodies of the v1 API. Field descriptions and examples feed the OpenAPI docs at /docs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, FiniteFloat, StrictBool, StrictInt
from pydantic import Strict as StrictMode

from app.engine import ACTIVATIONS, LOSSES

T = TypeVar("T")

Activation = Literal["linear", "relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softmax"]
LossName = Literal["mse", "mae", "huber", "binary_cross_entropy", "cross_entropy"]
assert set(Activation.__args__) == set(ACTIVATIONS)
assert set(LossName.__args__) == set(LOSSES)

# A JSON number (ints too), finite: no strings, no NaN/Infinity, no booleans.
Number = Annotated[float, StrictMode(), AllowInfNan(False)]

Label = StrictBool | StrictInt | Number | Annotated[str, Field(max_length=256)]
Id = Annotated[str, Field(min_length=1, max_length=64, examples=["6f1c0d2a9b8e4f7a8c3d2e1f0a9b8c7d"])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool = Field(description="True when more items follow; pass the last item's id as `after`.")


# --- networks ---------------------------------------------------------------------------------------------------


class LayerIn(Strict):
    units: StrictInt = Field(ge=1, le=1_048_576, description="Number of neurons.", examples=[64])
    activation: Activation = Field("relu", description="Activation after the affine map. softmax: output only.")
    dropout: FiniteFloat = Field(0.0, ge=0.0, lt=1.0, description="Dropout rate (hidden layers, training only).")
    init: Literal["he_normal", "he_uniform", "glorot_normal", "glorot_uniform"] | None = Field(
        None, description="Weight initializer; default He for the ReLU family, Glorot otherwise."
    )


class NetworkCreate(Strict):
    name: Annotated[str, Field(max_length=200)] | None = Field(None, examples=["iris-mlp"])
    input_dim: StrictInt = Field(ge=1, le=1_048_576, description="Number of input features.", examples=[4])
    layers: list[LayerIn] = Field(min_length=1, max_length=64, description="Dense layers, input to output.")
    loss: LossName = Field(description="cross_entropy needs a softmax output; binary_cross_entropy a sigmoid one.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "iris-mlp",
                    "input_dim": 4,
                    "layers": [{"units": 16, "activation": "relu"}, {"units": 3, "activation": "softmax"}],
                    "loss": "cross_entropy",
                }
            ]
        },
    )


class LayerOut(BaseModel):
    units: int
    activation: str
    dropout: float = 0.0
    init: str | None = None


class NetworkRead(BaseModel):
    id: str
    name: str | None
    input_dim: int
    layers: list[LayerOut]
    loss: str
    output_dim: int
    n_params: int = Field(description="Trainable parameters (weights and biases).")
    task: Literal["classification", "regression"]
    created_at: datetime


# --- datasets ---------------------------------------------------------------------------------------------------


class DatasetCreate(Strict):
    name: Annotated[str, Field(max_length=200)] | None = Field(None, examples=["iris"])
    features: list[list[Number]] = Field(
        min_length=1,
        description="Rows of numeric features, all the same length.",
        examples=[[[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4]]],
    )
    targets: list[Label] | list[list[Number]] = Field(
        min_length=1,
        description="One per row: a class label (int, string or bool) for classification, a number "
        "or a list of numbers for regression.",
        examples=[["setosa", "versicolor"]],
    )
    task: Literal["classification", "regression"] | None = Field(
        None, description="Default: strings, bools and ints are class labels; other numbers are regression targets."
    )
    feature_names: list[Annotated[str, Field(max_length=256)]] | None = None


class DatasetRead(BaseModel):
    id: str
    name: str | None
    n_samples: int
    n_features: int
    n_targets: int = Field(
        description="Output columns the network needs: number of classes, or of regression "
        "targets (1 for a binary sigmoid classifier also works)."
    )
    task: Literal["classification", "regression"]
    classes: list[Any] | None = Field(None, description="Class labels in the order of the output units.")
    feature_names: list[str] | None = None
    target_names: list[str] | None = None
    sha256: str
    nbytes: int
    created_at: datetime


# --- jobs -------------------------------------------------------------------------------------------------------


class OptimizerIn(Strict):
    name: Literal["sgd", "momentum", "rmsprop", "adam", "adamw"] = "adam"
    learning_rate: FiniteFloat | None = Field(None, gt=0, le=1000, description="Default 1e-3 (0.01 for sgd, momentum).")
    momentum: FiniteFloat = Field(0.9, ge=0, lt=1)
    nesterov: StrictBool = False
    beta1: FiniteFloat = Field(0.9, ge=0, lt=1)
    beta2: FiniteFloat = Field(0.999, ge=0, lt=1)
    rho: FiniteFloat = Field(0.9, ge=0, lt=1)
    eps: FiniteFloat = Field(1e-8, gt=0, le=1)
    weight_decay: FiniteFloat = Field(0.0, ge=0, le=10, description="L2 on weights; decoupled for adamw.")


class ScheduleIn(Strict):
    name: Literal["constant", "step", "exponential", "cosine"] = "constant"
    step_size: FiniteFloat = Field(10.0, gt=0, le=1e6, description="step: epochs between decays.")
    gamma: FiniteFloat | None = Field(
        None, gt=0, le=1, description="step: factor (0.1); exponential: per epoch (0.95)."
    )
    min_lr: FiniteFloat = Field(0.0, ge=0, le=1000, description="cosine: final learning rate.")
    warmup_epochs: FiniteFloat = Field(0.0, ge=0, le=1e6, description="Linear warmup, in (fractional) epochs.")


class EarlyStoppingIn(Strict):
    monitor: (
        Literal["loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae", "rmse", "val_rmse", "r2", "val_r2"]
        | None
    ) = Field(None, description="Default val_loss with validation data, else loss.")
    patience: StrictInt = Field(10, ge=0, le=1_000_000)
    min_delta: FiniteFloat = Field(0.0, ge=0)
    restore_best_weights: StrictBool = True


class JobCreate(Strict):
    network_id: Id
    dataset_id: Id
    epochs: StrictInt = Field(10, ge=1, description="Maximum number of passes over the training data.")
    batch_size: StrictInt = Field(32, ge=1)
    optimizer: OptimizerIn = Field(default_factory=OptimizerIn)
    schedule: ScheduleIn | None = None
    clip_norm: FiniteFloat | None = Field(None, gt=0, description="Clip gradients to this global L2 norm.")
    validation_split: FiniteFloat = Field(0.0, ge=0, lt=1, description="Fraction of rows held out for val metrics.")
    early_stopping: EarlyStoppingIn | None = None
    shuffle: StrictBool = True
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1, description="Default: drawn at random and recorded.")
    dtype: Literal["float32", "float64"] = "float32"
    standardize: StrictBool = Field(
        True,
        description="Scale features by the training split's mean and std; the "
        "model keeps the scaling, so predictions take raw inputs.",
    )
    keep_partial_model: StrictBool = Field(False, description="On cancel, store the last weights as a partial model.")
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="When the job ends (succeeded, failed or cancelled) a worker POSTs a signed JSON event here "
        "(see GET /v1/webhooks/secret); retried with backoff until a 2xx.",
        examples=["https://example.com/hooks/backprop"],
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "network_id": "6f1c0d2a9b8e4f7a8c3d2e1f0a9b8c7d",
                    "dataset_id": "0a9b8c7d6f1c0d2a9b8e4f7a8c3d2e1f",
                    "epochs": 100,
                    "batch_size": 16,
                    "optimizer": {"name": "adam", "learning_rate": 0.01},
                    "validation_split": 0.2,
                    "early_stopping": {"patience": 10},
                    "seed": 42,
                }
            ]
        },
    )


class JobError(BaseModel):
    code: Literal["divergence", "worker_lost", "invalid_input", "internal"]
    message: str


class Transition(BaseModel):
    status: str
    at: datetime
    reason: str | None = None


class WebhookAttemptRead(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = Field(None, description="The receiver's HTTP status; null if none came back.")
    error: str | None = None
    duration_ms: float


class WebhookDeliveryRead(BaseModel):
    id: str = Field(description="The event id (Backprop-Event-Id), the same on every retry.")
    event: str = Field(examples=["job.succeeded"])
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttemptRead]
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    created_at: datetime


class WebhookSecretRead(BaseModel):
    secret: str = Field(description="The HMAC-SHA256 key that signs this owner's webhook deliveries.")
    created_at: datetime
    algorithm: Literal["HMAC-SHA256"]
    signature_header: str
    timestamp_header: str
    signed_content: str


class JobRead(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    network_id: str
    dataset_id: str
    epoch: int = Field(description="Epochs completed.")
    epochs: int
    progress: float = Field(ge=0, le=1)
    loss: float | None = None
    val_loss: float | None = None
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Latest epoch's metrics; once training ended with early stopping's restored best weights, the "
        "best epoch's (those of the model's weights), as are loss and val_loss.",
    )
    model_id: str | None = None
    error: JobError | None = None
    attempt: int
    max_attempts: int
    cancel_requested: bool = False
    transitions: list[Transition] = Field(default_factory=list)
    spec: dict[str, Any] = Field(description="The training request as run, with defaults and the seed filled in.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook_url: str | None = None
    webhook_deliveries: list[WebhookDeliveryRead] = Field(
        default_factory=list, description="The job's webhook events and every attempt to POST them."
    )


class EpochRecord(BaseModel):
    epoch: int
    loss: float
    val_loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float


class History(BaseModel):
    job_id: str
    data: list[EpochRecord]


# --- models -----------------------------------------------------------------------------------------------------


class InputScaling(BaseModel):
    mean: list[float]
    scale: list[float]


class ModelRead(BaseModel):
    id: str
    job_id: str
    network_id: str
    dataset_id: str
    spec: dict[str, Any] = Field(description="The network spec: input_dim, layers, loss.")
    task: Literal["classification", "regression"]
    classes: list[Any] | None = None
    metrics: dict[str, Any] = Field(
        description="`final`: loss and metrics of the epoch whose weights the model holds (`weights_epoch`; the best "
        "epoch once early stopping restored its weights, else the last), best_epoch, epochs_run."
    )
    input_scaling: InputScaling | None = None
    partial: bool = Field(False, description="True for the weights of a cancelled job, kept on request.")
    created_at: datetime


class LayerWeights(BaseModel):
    weights: list[list[float]] = Field(description="(n_in, n_out): output = input @ weights + biases.")
    biases: list[float]
    activation: str


class Weights(BaseModel):
    model_id: str
    layers: list[LayerWeights]
    input_scaling: InputScaling | None = None


class PredictRequest(Strict):
    inputs: list[list[Number]] = Field(
        min_length=1, description="Raw feature rows (the model applies its scaling).", examples=[[[5.1, 3.5, 1.4, 0.2]]]
    )


class PredictResponse(BaseModel):
    model_id: str
    outputs: list[list[float]] = Field(description="Class probabilities (classifiers) or predicted values.")
    labels: list[Any] | None = Field(None, description="Predicted class labels in the dataset's own values.")


class Health(BaseModel):
    status: str
    detail: str | None = None
