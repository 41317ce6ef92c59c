"""What ``Trainer.train_step`` computes for one batch, with the trainer put back as it was.

The tests of the objective read the step's own loss (not a copy of its forward), so they take one real step,
collect the gradients that reached each parameter, and restore the weights, optimizer, scaler and step.
"""
import copy


def step_on(trainer, batch) -> tuple[dict, dict]:
    """``train_step([batch])``'s metrics and the gradients (by parameter name) of its backward; the trainer's state
    is unchanged afterwards."""
    model = trainer.model
    saved = copy.deepcopy((model.state_dict(), trainer.optimizer.state_dict(), trainer.scaler.state_dict()))
    step, grads = trainer.step, {}
    hooks = [p.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().clone()))
             for name, p in model.named_parameters() if p.requires_grad]
    try:
        metrics = trainer.train_step([batch])
    finally:
        for hook in hooks:
            hook.remove()
        model.load_state_dict(saved[0])
        trainer.optimizer.load_state_dict(saved[1])
        if saved[2]:
            trainer.scaler.load_state_dict(saved[2])
        trainer.step = step
    return metrics, grads
