"""The paper's studies, re-runnable on any processed dataset with one command or one pipeline.

=======  =========================================================================================
table2   every model, each domain as target, several seeds (optional grid search on validation)
table5   CDAnet's ablations next to the full model
fig5     sparsity: fraction of the target's training split (validation/test fixed)
fig6     sensitivity to alpha, beta and K
table4   nearest source items of translated target latents (semantics of translation, Sec. 5.3)
=======  =========================================================================================

``python -m cdanet.studies {table2,table5,fig5,fig6,table4,all} --processed DIR --output DIR``;
``experiments_pipeline.py`` runs the same plans on Kubeflow. See docs/studies.md.
"""

from cdanet.studies.ceiling import CeilingScore, learnable_ceiling, learnable_ceilings, map_user_latents
from cdanet.studies.oracle import OracleAUC, oracle_auc, oracle_aucs
from cdanet.studies.plan import Cell, Run, StudyPlan, plan_study, run_id_of, unique_runs
from cdanet.studies.reference_rows import ReferenceScore, reference_scores
from cdanet.studies.runner import RunRecord, execute_run, run_many
from cdanet.studies.spec import STUDIES, TRAINING_STUDIES, StudySpec, StudySpecError, grid_points
from cdanet.studies.study import (
    fig5,
    fig6,
    infer_dataset,
    run_studies,
    run_training_study,
    table2,
    table4,
    table5,
)

__all__ = [
    "STUDIES",
    "TRAINING_STUDIES",
    "CeilingScore",
    "Cell",
    "OracleAUC",
    "ReferenceScore",
    "Run",
    "RunRecord",
    "StudyPlan",
    "StudySpec",
    "StudySpecError",
    "execute_run",
    "fig5",
    "fig6",
    "grid_points",
    "infer_dataset",
    "learnable_ceiling",
    "learnable_ceilings",
    "map_user_latents",
    "oracle_auc",
    "oracle_aucs",
    "plan_study",
    "reference_scores",
    "run_id_of",
    "run_many",
    "run_studies",
    "run_training_study",
    "table2",
    "table4",
    "table5",
    "unique_runs",
]
