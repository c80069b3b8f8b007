/* test_optimizer.c: AdamW + clip_grad_norm_ against values produced by PyTorch, and the
 * learning-rate schedule's shape. Regenerate the reference with (torch 2.x, CPU):
 *   p = torch.tensor([0.5, -1.25, 3.0, 0.0, 1e-3], requires_grad=True)
 *   opt = torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
 *   for g in [[0.1,-0.2,0.3,0.0,5.0], [-0.05,0.4,0.1,1.0,-5.0], [0.2,0.2,-0.3,-1.0,0.5]]:
 *       opt.zero_grad(); p.grad = torch.tensor(g); torch.nn.utils.clip_grad_norm_([p], 1.0); opt.step()
 *   print(p, opt.state[p]['exp_avg'], opt.state[p]['exp_avg_sq'])
 */
#include <math.h>
#include <string.h>

#include "test_util.h"
#include "vera/backend.h"
#include "vera/optimizer.h"

int main(void) {
    const vd_backend *be = vd_backend_cpu();
    vd_adamw_options o = {0.01f, 0.1f, 0, 100, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    vd_adamw opt;
    vd_adamw_init(&opt, be, 5, &o);
    float p[5] = {0.5f, -1.25f, 3.0f, 0.0f, 1e-3f};
    const float g[3][5] = {{0.1f, -0.2f, 0.3f, 0.0f, 5.0f}, {-0.05f, 0.4f, 0.1f, 1.0f, -5.0f}, {0.2f, 0.2f, -0.3f, -1.0f, 0.5f}};
    float norm0 = 0;
    for (int s = 0; s < 3; s++) {
        float n = vd_adamw_step(&opt, p, g[s], 0.01f);
        if (s == 0) norm0 = n;
    }
    CHECK_CLOSE(norm0, sqrt(0.01 + 0.04 + 0.09 + 25.0), 1e-6, 0, "pre-clip norm");
    const double want_p[5] = {0.47930818796157837, -1.2466484308242798, 2.9767394065856934, -0.002538751345127821, -0.010097350925207138};
    const double want_m[5] = {0.01751948706805706, 0.020589523017406464, -0.01856975443661213, -0.06632588803768158, 0.03477223590016365};
    const double want_v[5] = {0.0014309353427961469, 0.001770627568475902, 0.003348703496158123, 0.037026096135377884, 0.09904853254556656};
    for (int i = 0; i < 5; i++) {
        CHECK_CLOSE(p[i], want_p[i], 2e-6, 1e-7, "param vs torch");
        CHECK_CLOSE(opt.m[i], want_m[i], 2e-6, 1e-9, "exp_avg vs torch");
        CHECK_CLOSE(opt.v[i], want_v[i], 2e-6, 1e-10, "exp_avg_sq vs torch");
    }
    /* schedule: warmup 10 then cosine to 10% at 110 */
    vd_adamw_options s = {1.0f, 0.1f, 10, 110, 0.9f, 0.999f, 1e-8f, 0.0f, 0.0f};
    CHECK_CLOSE(vd_lr_schedule(&s, 0), 0.1, 1e-6, 0, "first warmup step");
    CHECK_CLOSE(vd_lr_schedule(&s, 9), 1.0, 1e-6, 0, "end of warmup");
    CHECK_CLOSE(vd_lr_schedule(&s, 10), 1.0, 1e-6, 0, "start of cosine");
    CHECK_CLOSE(vd_lr_schedule(&s, 60), 0.55, 1e-6, 0, "cosine midpoint");
    CHECK_CLOSE(vd_lr_schedule(&s, 110), 0.1, 1e-6, 0, "floor");
    CHECK(vd_lr_schedule(&s, 30) > vd_lr_schedule(&s, 31), "decreasing");
    vd_adamw_free(&opt);
    TEST_END();
}
