import torch

from emu_video.model.attention import FF_CHUNKS, FeedForward


def test_inference_feed_forward_chunking_matches_one_call():
    torch.manual_seed(0)
    ff = FeedForward(16)
    x = torch.randn(FF_CHUNKS * 3 + 1, 5, 16)  # not a multiple of the chunk count
    with torch.no_grad():
        chunked = ff(x)
    full = ff.net(x)
    torch.testing.assert_close(chunked, full)
    assert full.requires_grad  # with grad enabled the one-call path is taken (autograd saves it all anyway)
